"""samkit.data: idx reader, Fashion-MNIST checks and errors, CIFAR-10 pickle reader, loaders, augmentation."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from samkit import data as D
from samkit.models import build_model


def _write_idx(path: Path, arr: np.ndarray) -> None:
    header = bytes([0, 0, 8, arr.ndim]) + b"".join(struct.pack(">I", s) for s in arr.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + arr.astype(np.uint8).tobytes())


def _fake_fashion(root: Path, n_train: int = 20, n_test: int = 10) -> dict[str, str]:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    _write_idx(root / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (n_train, 28, 28)))
    _write_idx(root / "train-labels-idx1-ubyte.gz", rng.integers(0, 10, (n_train,)))
    _write_idx(root / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (n_test, 28, 28)))
    _write_idx(root / "t10k-labels-idx1-ubyte.gz", rng.integers(0, 10, (n_test,)))
    return {name: D.sha256_file(root / name) for name in D.FASHION_MNIST_SHA256}


def test_read_idx_roundtrip_and_bad_magic(tmp_path):
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / "a.gz", arr)
    np.testing.assert_array_equal(D.read_idx(tmp_path / "a.gz"), arr)
    (tmp_path / "b").write_bytes(b"\x01\x02\x03\x04rest")
    with pytest.raises(D.DataError, match="bad magic"):
        D.read_idx(tmp_path / "b")
    (tmp_path / "c").write_bytes(bytes([0, 0, 8, 1]) + struct.pack(">I", 5) + b"ab")
    with pytest.raises(D.DataError, match="holds 2 bytes"):
        D.read_idx(tmp_path / "c")


def test_missing_fashion_mnist_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.delenv(D.ENV_VAR, raising=False)
    with pytest.raises(D.DataError) as err:
        D.load_fashion_mnist(tmp_path / "nowhere")
    msg = str(err.value)
    assert "apt-get install dataset-fashion-mnist" in msg and "--data-dir" in msg and D.ENV_VAR in msg
    assert "\n" not in msg


def test_checksum_mismatch_is_an_error(tmp_path, monkeypatch):
    _fake_fashion(tmp_path)
    with pytest.raises(D.DataError, match="checksum mismatch for .*train-images"):
        D.load_fashion_mnist(tmp_path)


def test_fake_fashion_loads_with_matching_checksums_env_var_and_subfolder(tmp_path, monkeypatch):
    sums = _fake_fashion(tmp_path / "fashion-mnist", n_train=20, n_test=10)
    monkeypatch.setattr(D, "FASHION_MNIST_SHA256", sums)
    monkeypatch.setenv(D.ENV_VAR, str(tmp_path))  # the parent folder: the loader looks in fashion-mnist/
    train, test = D.load_fashion_mnist()
    assert train.images.shape == (20, 1, 28, 28) and test.images.shape == (10, 1, 28, 28)
    assert train.images.dtype == torch.uint8 and train.labels.dtype == torch.int64
    # an explicit data_dir wins over the environment variable
    with pytest.raises(D.DataError, match="not found"):
        D.load_fashion_mnist(tmp_path / "elsewhere")


@pytest.mark.skipif(
    not Path(D.DEFAULT_FASHION_MNIST_DIR, "train-images-idx3-ubyte.gz").exists(),
    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)",
)
def test_real_fashion_mnist(monkeypatch):
    monkeypatch.delenv(D.ENV_VAR, raising=False)
    train, test = D.load_fashion_mnist()
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert torch.bincount(train.labels).tolist() == [6000] * 10
    x, _ = train.batch(torch.arange(1000))
    assert abs(float(x.mean())) < 0.1 and abs(float(x.std()) - 1) < 0.1


def _write_cifar(root: Path, n: int = 6) -> None:
    rng = np.random.default_rng(1)
    root.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        d = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": list(rng.integers(0, 10, n))}
        with open(root / name, "wb") as fh:
            pickle.dump(d, fh)


def test_cifar10_reader_on_a_tiny_file_in_the_standard_format(tmp_path, monkeypatch):
    monkeypatch.delenv(D.ENV_VAR, raising=False)
    _write_cifar(tmp_path / "cifar-10-batches-py", n=6)
    train, test = D.load_cifar10(tmp_path)
    assert train.images.shape == (30, 3, 32, 32) and test.images.shape == (6, 3, 32, 32)
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_1", "rb") as fh:
        raw = pickle.load(fh, encoding="bytes")
    # channel-first layout of the standard format: the first 1024 bytes are the red plane
    assert train.images[0, 0].flatten().tolist() == raw[b"data"][0, :1024].tolist()
    with pytest.raises(D.DataError, match="cifar-10-python.tar.gz"):
        D.load_cifar10(tmp_path / "nothing")
    with pytest.raises(D.DataError, match="needs a data directory"):
        D.load_cifar10(None)


def test_loader_is_deterministic_covers_the_data_and_reshuffles_per_epoch():
    ds, _ = D.synthetic(n_train=50, n_test=10, image_size=8, seed=0)
    a = D.Loader(ds, 16, shuffle=True, seed=3)
    b = D.Loader(ds, 16, shuffle=True, seed=3)
    assert len(a) == 4
    ia, ib = a.indices(), b.indices()
    assert torch.equal(ia, ib) and sorted(ia.tolist()) == list(range(50))
    a.set_epoch(1)
    assert not torch.equal(a.indices(), ib)
    for (x1, y1), (x2, y2) in zip(D.Loader(ds, 16, shuffle=True, seed=3), b):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)


def test_distributed_shards_are_disjoint_and_cover_the_data():
    ds, _ = D.synthetic(n_train=40, n_test=10, image_size=8, seed=0)
    shards = [D.Loader(ds, 8, shuffle=True, seed=0, num_replicas=2, rank=r).indices() for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == 20
    assert sorted(torch.cat(shards).tolist()) == list(range(40))
    assert isinstance(D.Loader(ds, 8, num_replicas=2, rank=1).sampler, torch.utils.data.DistributedSampler)
    ev = [D.Loader(ds, 8, num_replicas=2, rank=r, shard_padding=False).indices() for r in range(2)]
    assert sorted(torch.cat(ev).tolist()) == list(range(40))


def test_crop_flip_augmentation():
    g = torch.Generator().manual_seed(0)
    x = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).reshape(2, 1, 6, 6) + 1
    out = D.augment_crop_flip(x, g, padding=0)  # no padding: only flips
    for i in range(2):
        assert torch.equal(out[i], x[i]) or torch.equal(out[i], x[i].flip(-1))
    g = torch.Generator().manual_seed(1)
    out = D.augment_crop_flip(x.repeat(64, 1, 1, 1), g, padding=4)
    # every output is a (possibly flipped) 6x6 window of the zero-padded image
    assert out.shape == (128, 1, 6, 6) and (out == 0).any() and len({o.sum().item() for o in out}) > 5
    ds = D.ArrayDataset(torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8), torch.arange(8))
    l1 = [x for x, _ in D.Loader(ds, 4, shuffle=True, augment=True, seed=5)]
    l2 = [x for x, _ in D.Loader(ds, 4, shuffle=True, augment=True, seed=5)]
    assert all(torch.equal(a, b) for a, b in zip(l1, l2))


@pytest.mark.parametrize("name", ["mlp", "cnn", "resnet20"])
@pytest.mark.parametrize("shape", [(1, 28), (3, 32)])
def test_models_shapes(name, shape):
    c, s = shape
    torch.manual_seed(0)
    model = build_model(name, in_channels=c, image_size=s, num_classes=10)
    assert model(torch.zeros(2, c, s, s)).shape == (2, 10)
