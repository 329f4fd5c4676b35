"""samkit.data: idx reader, Fashion-MNIST checks and errors, CIFAR-10 pickle reader, loaders, augmentation."""

from __future__ import annotations

import gzip
import hashlib
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from cifar_files import py2_pickle, write_folder

from samkit import data as D


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


def test_cifar10_reader_on_tiny_files_in_the_official_format(tmp_path, monkeypatch):
    monkeypatch.delenv(D.ENV_VAR, raising=False)
    written = write_folder(tmp_path / "cifar-10-batches-py", n=6)
    train, test = D.load_cifar10(tmp_path, verify=False)
    assert train.images.shape == (30, 3, 32, 32) and test.images.shape == (6, 3, 32, 32)
    assert train.images.dtype == torch.uint8 and train.labels.dtype == torch.int64
    # channel-first layout of the official format: the first 1024 bytes are the red plane, row-major
    raw = written["data_batch_1"][b"data"]
    assert train.images[0, 0].flatten().tolist() == raw[0, :1024].tolist()
    assert train.images[0, 2, 31].tolist() == raw[0, 3072 - 32 :].tolist()
    assert train.labels[:6].tolist() == written["data_batch_1"][b"labels"]
    assert train.labels[6:12].tolist() == written["data_batch_2"][b"labels"]  # the batches in order
    assert test.labels.tolist() == written["test_batch"][b"labels"]
    with pytest.raises(D.DataError, match="cifar-10-python.tar.gz"):
        D.load_cifar10(tmp_path / "nothing")
    with pytest.raises(D.DataError, match="needs a data directory"):
        D.load_cifar10(None)


def test_cifar10_files_are_checked_against_the_official_md5(tmp_path, monkeypatch):
    root = tmp_path / "cifar-10-batches-py"
    write_folder(root, n=2)
    with pytest.raises(D.DataError) as err:
        D.load_cifar10(tmp_path)
    msg = str(err.value)
    assert "data_batch_1 is not a known CIFAR-10 file" in msg and D.CIFAR10_MD5["data_batch_1"] in msg
    assert "verify=False" in msg and "\n" not in msg
    sums = {n: hashlib.md5((root / n).read_bytes()).hexdigest() for n in D.CIFAR10_MD5}
    monkeypatch.setattr(D, "CIFAR10_MD5", sums)  # as if these were the official files: they load verified
    assert len(D.load_cifar10(root)[0]) == 10
    changed = tmp_path / "changed"
    shutil.copytree(root, changed)
    raw = bytearray((root / "test_batch").read_bytes())
    raw[len(raw) // 2] ^= 1  # one bit of one pixel
    (changed / "test_batch").write_bytes(bytes(raw))
    with pytest.raises(D.DataError, match="test_batch is not a known CIFAR-10 file"):
        D.load_cifar10(changed)
    assert len(D.load_cifar10(changed, verify=False)[1]) == 2  # still a well-formed batch


@pytest.mark.parametrize(
    "payload, message",
    [
        ({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}, "'data' is a float32 array"),
        ({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, r"shape \(2, 100\); expected a uint8"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 12]}, "labels in 0..9"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": ["a", "b"]}, "list of integers"),
        ({b"labels": [0]}, "expected 'data' and 'labels'"),
        ([1, 2], "expected a pickled dict, got list"),
    ],
)
def test_malformed_cifar10_batches_are_one_line_errors(tmp_path, payload, message):
    path = tmp_path / "data_batch_1"
    path.write_bytes(py2_pickle(payload))
    with pytest.raises(D.DataError, match=message) as err:
        D._read_cifar_batch(path)
    assert "\n" not in str(err.value)
    path.write_bytes(py2_pickle(payload)[: len(py2_pickle(payload)) // 2])  # truncated
    with pytest.raises(D.DataError, match="truncated or corrupt"):
        D._read_cifar_batch(path)


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


def _placements(out: torch.Tensor, image: torch.Tensor, padding: int) -> list[tuple[int, int, bool]]:
    """Every (row offset, column offset, flipped) with which ``out`` is a window of the zero-padded ``image``."""
    h, w = image.shape[-2:]
    padded = torch.nn.functional.pad(image, (padding,) * 4)
    windows = {
        (oy, ox): padded[..., oy : oy + h, ox : ox + w]
        for oy in range(2 * padding + 1)
        for ox in range(2 * padding + 1)
    }
    return [
        (oy, ox, f)
        for (oy, ox), win in windows.items()
        for f in (False, True)
        if torch.equal(out, win.flip(-1) if f else win)
    ]


def _placement(out: torch.Tensor, image: torch.Tensor, padding: int) -> tuple[int, int, bool]:
    found = _placements(out, image, padding)
    assert len(found) == 1, found  # distinct positive pixel values: exactly one window matches
    return found[0]


def test_crop_flip_is_an_exact_window_of_the_zero_padded_image_with_seeded_uniform_choices():
    image = torch.arange(1, 2 * 6 * 6 + 1, dtype=torch.float32).reshape(2, 6, 6)  # distinct, nonzero pixels
    n, p = 2000, 2
    out = D.augment_crop_flip(image.expand(n, 2, 6, 6), torch.Generator().manual_seed(0), padding=p)
    placements = [_placement(o, image, p) for o in out]
    # the mirror is exact: the flipped identity window is image.flip(-1) itself
    identity, mirror = out[placements.index((p, p, False))], out[placements.index((p, p, True))]
    assert torch.equal(identity, image) and torch.equal(mirror, image.flip(-1))
    # a corner crop shifts the image by p and fills the uncovered rows and columns with zeros
    corner = out[placements.index((0, 0, False))]
    assert torch.equal(corner[:, :p], torch.zeros(2, p, 6)) and torch.equal(corner[:, :, :p], torch.zeros(2, 6, p))
    assert torch.equal(corner[:, p:, p:], image[:, : 6 - p, : 6 - p])
    # flips with probability 1/2, the 25 offsets uniformly (bounds: > 4.5 standard deviations)
    flips = sum(f for _, _, f in placements) / n
    assert abs(flips - 0.5) < 0.05
    counts = torch.zeros(2 * p + 1, 2 * p + 1)
    for oy, ox, _ in placements:
        counts[oy, ox] += 1
    assert counts.min() > n / 25 - 40 and counts.max() < n / 25 + 40
    # the randomness comes only from the generator
    again = D.augment_crop_flip(image.expand(n, 2, 6, 6), torch.Generator().manual_seed(0), padding=p)
    other = D.augment_crop_flip(image.expand(n, 2, 6, 6), torch.Generator().manual_seed(1), padding=p)
    assert torch.equal(out, again) and not torch.equal(out, other)
    # padding 0: only flips, each image either itself or its exact mirror
    flipped_only = D.augment_crop_flip(image.expand(8, 2, 6, 6), torch.Generator().manual_seed(2), padding=0)
    assert {_placement(o, image, 0) for o in flipped_only} == {(0, 0, False), (0, 0, True)}


def test_loader_augments_uint8_images_before_normalizing_and_reseeds_per_epoch():
    images = torch.randint(1, 256, (4, 3, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    ds = D.ArrayDataset(images, torch.arange(4), mean=(0.5,), std=(0.25,))
    loader = D.Loader(ds, 4, shuffle=True, augment=True, seed=5)
    (x, y), order = next(iter(loader)), loader.indices()
    assert torch.equal(y, order)
    pixels = torch.round((x * 0.25 + 0.5) * 255).to(torch.uint8)  # undo the normalization
    assert all(_placements(out, images[i], 4) for out, i in zip(pixels, order))  # windows of the padded images
    assert not torch.equal(pixels, images[order])  # and not all of them the identity
    assert torch.equal(next(iter(D.Loader(ds, 4, shuffle=True, augment=True, seed=5)))[0], x)
    loader.set_epoch(1)
    assert not torch.equal(next(iter(loader))[0], x)
