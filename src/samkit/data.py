"""Image-classification data without torchvision: Fashion-MNIST, CIFAR-10, a synthetic set, and a seeded loader.

* :func:`load_fashion_mnist` reads the four ``*-ubyte.gz`` idx files (Debian package ``dataset-fashion-mnist``,
  installed under ``/usr/share/datasets/fashion-mnist``) and checks their sha256.
* :func:`load_cifar10` reads a user-supplied ``cifar-10-batches-py`` folder (the standard pickle format) through a
  restricted unpickler that builds only what the official batches hold (dicts, lists, strings, numbers and uint8
  numpy arrays) and refuses every other global, so a crafted batch cannot run code; the official files' md5 sums
  are checked first.
* :func:`synthetic` makes a small, learnable, seeded dataset for fast tests.
* :class:`Loader` batches an :class:`ArrayDataset` deterministically: the order comes from a
  :class:`torch.utils.data.DistributedSampler` (``seed`` + epoch; one replica unless running under DDP), and
  the optional CIFAR augmentation (random crop with padding 4, horizontal flip) from a generator seeded by
  ``(seed, epoch, rank)``. The same seed gives the same batches, across processes and restarts.

The data directory is, in order: the ``data_dir`` argument (``--data-dir``), the environment variable
``SAMKIT_DATA_DIR``, then the Debian location.

Example:
    >>> train, test = synthetic(n_train=64, n_test=32, image_size=8, channels=1, seed=0)
    >>> loader = Loader(train, batch_size=16, shuffle=True, seed=0)
    >>> x, y = next(iter(loader))
    >>> x.shape, y.shape, x.dtype, len(loader)
    (torch.Size([16, 1, 8, 8]), torch.Size([16]), torch.float32, 4)
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import pickle
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DistributedSampler

__all__ = [
    "DATASETS",
    "ENV_VAR",
    "DEFAULT_FASHION_MNIST_DIR",
    "FASHION_MNIST_SHA256",
    "CIFAR10_MD5",
    "DataError",
    "ArrayDataset",
    "Loader",
    "read_idx",
    "sha256_file",
    "resolve_data_dir",
    "load_fashion_mnist",
    "load_cifar10",
    "synthetic",
    "load_dataset",
    "augment_crop_flip",
]

#: Dataset names understood by :func:`load_dataset`.
DATASETS = ("fashion-mnist", "cifar10", "synthetic")
#: Environment variable that overrides the data directory.
ENV_VAR = "SAMKIT_DATA_DIR"
#: Where Debian's ``dataset-fashion-mnist`` puts the files.
DEFAULT_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
#: sha256 of the four Fashion-MNIST files (identical to the upstream zalandoresearch files).
FASHION_MNIST_SHA256 = {
    "train-images-idx3-ubyte.gz": "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
    "train-labels-idx1-ubyte.gz": "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
    "t10k-images-idx3-ubyte.gz": "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
    "t10k-labels-idx1-ubyte.gz": "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
}
#: md5 of the six batches of the official ``cifar-10-python.tar.gz`` (the sums torchvision checks; the dataset's
#: authors publish no sha256).
CIFAR10_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
}
_CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
_FASHION_MEAN, _FASHION_STD = (0.2860,), (0.3530,)
_CIFAR_MEAN, _CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
_FASHION_HOWTO = (
    "install it with `sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu; files go to "
    f"{DEFAULT_FASHION_MNIST_DIR}), or put the four files {', '.join(FASHION_MNIST_SHA256)} "
    f"(from https://github.com/zalandoresearch/fashion-mnist) in a folder and pass --data-dir DIR or set {ENV_VAR}=DIR"
)


class DataError(ValueError):
    """Missing, corrupt or malformed data; the message says what is wrong and how to fix it."""


@dataclass
class ArrayDataset:
    """Images as a uint8 tensor ``(N, C, H, W)`` (or float), integer labels ``(N,)``, and the per-channel
    normalization applied when batches are made.

    >>> ds = ArrayDataset(torch.zeros(4, 1, 2, 2, dtype=torch.uint8), torch.arange(4), name="x")
    >>> len(ds), ds.shape, ds.subset(2).labels.tolist()
    (4, (1, 2, 2), [0, 1])
    """

    images: Tensor
    labels: Tensor
    name: str = "dataset"
    num_classes: int = 10
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)

    def __post_init__(self) -> None:
        if self.images.ndim != 4:
            raise DataError(f"{self.name}: images must have shape (N, C, H, W), got {tuple(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise DataError(
                f"{self.name}: {self.images.shape[0]} images but labels of shape {tuple(self.labels.shape)}"
            )
        self.labels = self.labels.to(torch.int64)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(C, H, W)``."""
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def subset(self, n: int | None) -> ArrayDataset:
        """The first ``n`` examples (all of them when ``n`` is ``None`` or ≥ the size)."""
        if n is None or n >= len(self):
            return self
        if n < 1:
            raise DataError(f"subset size must be >= 1, got {n}")
        return ArrayDataset(self.images[:n], self.labels[:n], self.name, self.num_classes, self.mean, self.std)

    def batch(self, idx: Tensor) -> tuple[Tensor, Tensor]:
        """Normalized float32 images and labels at the indices ``idx``."""
        return self.normalize(self.images[idx]), self.labels[idx]

    def normalize(self, x: Tensor) -> Tensor:
        """uint8 ``[0, 255]`` (or float ``[0, 1]``) images to ``(x − mean) / std`` in float32."""
        x = x.to(torch.float32)
        if self.images.dtype == torch.uint8:
            x = x / 255.0
        c = x.shape[1]
        mean = torch.tensor(self.mean if len(self.mean) == c else self.mean * c, dtype=torch.float32)
        std = torch.tensor(self.std if len(self.std) == c else self.std * c, dtype=torch.float32)
        return (x - mean.view(1, c, 1, 1)) / std.view(1, c, 1, 1)


# ---------------------------------------------------------------------------------------------------- files
def sha256_file(path: str | os.PathLike) -> str:
    """The hex sha256 of a file."""
    return _digest(Path(path), "sha256")


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an idx file (optionally gzipped) of unsigned bytes into an array of its stated shape.

    >>> import tempfile, struct
    >>> p = Path(tempfile.mkdtemp()) / "x-idx1-ubyte.gz"
    >>> _ = gzip.open(p, "wb").write(bytes([0, 0, 8, 1]) + struct.pack(">I", 3) + bytes([7, 8, 9]))
    >>> read_idx(p).tolist()
    [7, 8, 9]
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            data = fh.read()
    except (OSError, EOFError) as err:
        raise DataError(f"cannot read {path}: {err}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"{path} is not an idx file of unsigned bytes (bad magic number)")
    nd = data[3]
    header = 4 + 4 * nd
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(nd)]
    if len(data) - header != math.prod(dims):
        raise DataError(f"{path}: header says shape {dims} but the file holds {len(data) - header} bytes")
    return np.frombuffer(data, np.uint8, offset=header).reshape(dims)


def resolve_data_dir(data_dir: str | os.PathLike | None, default: str | None = None) -> Path | None:
    """``data_dir`` if given, else ``$SAMKIT_DATA_DIR`` if set, else ``default``."""
    if data_dir is not None and str(data_dir) != "":
        return Path(data_dir).expanduser()
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    return Path(default) if default is not None else None


_VERIFIED: dict[tuple[str, str, int, int], str] = {}


def _digest(path: Path, algorithm: str) -> str:
    """The hex digest of a file, cached per (path, size, mtime) so that a file is hashed once per process."""
    st = path.stat()
    key = (algorithm, str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _VERIFIED:
        h = hashlib.new(algorithm, usedforsecurity=False)
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        _VERIFIED[key] = h.hexdigest()
    return _VERIFIED[key]


def _verify(path: Path, expected: str) -> None:
    got = _digest(path, "sha256")
    if got != expected:
        raise DataError(
            f"checksum mismatch for {path}: sha256 {got} but expected {expected}; the file is corrupt or not the "
            f"official Fashion-MNIST. Reinstall it (`sudo apt-get install --reinstall dataset-fashion-mnist`) or "
            "replace the file"
        )


def _find_fashion_dir(data_dir: str | os.PathLike | None) -> Path:
    base = resolve_data_dir(data_dir, DEFAULT_FASHION_MNIST_DIR)
    assert base is not None
    for cand in (base, base / "fashion-mnist", base / "fashion_mnist", base / "FashionMNIST" / "raw"):
        if all((cand / f).is_file() for f in FASHION_MNIST_SHA256):
            return cand
    where = "--data-dir" if data_dir else (f"${ENV_VAR}" if os.environ.get(ENV_VAR) else "default location")
    missing = [f for f in FASHION_MNIST_SHA256 if not (base / f).is_file()]
    raise DataError(f"Fashion-MNIST not found in {base} ({where}; missing {', '.join(missing)}): {_FASHION_HOWTO}")


def load_fashion_mnist(
    data_dir: str | os.PathLike | None = None, *, verify: bool = True
) -> tuple[ArrayDataset, ArrayDataset]:
    """Fashion-MNIST as ``(train, test)``: 60000 and 10000 uint8 images ``(N, 1, 28, 28)``, 10 classes.

    Raises :class:`DataError` when the files are missing (the message says how to install them) or when a
    sha256 differs (``verify=False`` skips the check).
    """
    root = _find_fashion_dir(data_dir)
    if verify:
        for name, digest in FASHION_MNIST_SHA256.items():
            _verify(root / name, digest)
    out = []
    for split in ("train", "t10k"):
        x = read_idx(root / f"{split}-images-idx3-ubyte.gz")
        y = read_idx(root / f"{split}-labels-idx1-ubyte.gz")
        if x.ndim != 3 or y.ndim != 1 or x.shape[0] != y.shape[0]:
            raise DataError(f"{root}: unexpected shapes {x.shape} and {y.shape} for the {split} split")
        images = torch.from_numpy(x.copy()).unsqueeze(1)
        labels = torch.from_numpy(y.astype(np.int64))
        out.append(ArrayDataset(images, labels, "fashion-mnist", 10, _FASHION_MEAN, _FASHION_STD))
    return out[0], out[1]


def _ndarray_reconstruct() -> object:
    # numpy's own array-rebuilding function, whatever module numpy 1.x / 2.x keeps it in
    return np.empty(0).__reduce__()[0]


#: The only globals a CIFAR-10 batch refers to: numpy's array reconstruction (``_reconstruct(ndarray, shape,
#: dtype)`` and the dtype), under numpy 1.x and 2.x names. Everything else is dicts, lists, strings and numbers.
_CIFAR_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _ndarray_reconstruct(),
    ("numpy._core.multiarray", "_reconstruct"): _ndarray_reconstruct(),
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class _CifarUnpickler(pickle.Unpickler):
    """Builds only what an official CIFAR-10 batch holds; any other global is refused before it is looked up."""

    def find_class(self, module: str, name: str) -> object:
        found = _CIFAR_GLOBALS.get((module, name))
        if found is None:
            raise _Refused(f"{module}.{name}")
        return found


class _Refused(pickle.UnpicklingError):
    pass


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as fh:
            d = _CifarUnpickler(fh, encoding="bytes").load()
    except _Refused as err:
        raise DataError(
            f"{path} is not a CIFAR-10 batch: it asks to load {err}, which a CIFAR-10 batch never holds "
            "(refused; nothing in it was run)"
        ) from None
    except Exception as err:  # noqa: BLE001 - any failure to decode an untrusted file is the same one-line error
        raise DataError(
            f"cannot read CIFAR-10 batch {path}: the file is truncated or corrupt ({type(err).__name__})"
        ) from None
    if not isinstance(d, dict):
        raise DataError(f"{path} is not a CIFAR-10 batch (expected a pickled dict, got {type(d).__name__})")
    d = {(k.decode() if isinstance(k, bytes) else k): v for k, v in d.items()}
    if "data" not in d or "labels" not in d:
        raise DataError(f"{path} is not a CIFAR-10 batch (keys {sorted(map(str, d))}; expected 'data' and 'labels')")
    x, labels = d["data"], d["labels"]
    if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3072:
        what = f"{x.dtype} array of shape {x.shape}" if isinstance(x, np.ndarray) else type(x).__name__
        raise DataError(f"{path}: 'data' is a {what}; expected a uint8 array of shape (N, 3072)")
    if not isinstance(labels, (list, np.ndarray)) or not all(isinstance(v, (int, np.integer)) for v in labels):
        raise DataError(f"{path}: 'labels' must be a list of integers")
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    if x.shape[0] != y.shape[0] or (y.size and (y.min() < 0 or y.max() > 9)):
        raise DataError(f"{path}: {x.shape[0]} images and {y.shape[0]} labels; expected as many labels in 0..9")
    return x.reshape(-1, 3, 32, 32), y


def _verify_cifar(path: Path) -> None:
    got, expected = _digest(path, "md5"), CIFAR10_MD5[path.name]
    if got != expected:
        raise DataError(
            f"{path} is not a known CIFAR-10 file: its md5 is {got}, the official {path.name} has {expected} "
            f"(corrupt, or not from cifar-10-python.tar.gz of {_CIFAR_URL}); replace it, or pass verify=False "
            "(samkit train --no-verify-data) to read it anyway through the restricted reader"
        )


def load_cifar10(
    data_dir: str | os.PathLike | None = None, *, verify: bool = True
) -> tuple[ArrayDataset, ArrayDataset]:
    """CIFAR-10 as ``(train, test)`` from a folder in the standard ``cifar-10-batches-py`` pickle format.

    ``data_dir`` (or ``$SAMKIT_DATA_DIR``) is either that folder or its parent. CIFAR-10 cannot be downloaded
    by samkit: get ``cifar-10-python.tar.gz`` from https://www.cs.toronto.edu/~kriz/cifar.html and unpack it.
    Each batch's md5 must be the official one (:data:`CIFAR10_MD5`; ``verify=False`` skips the check, e.g. for a
    re-made copy). Either way the batches are read by a restricted unpickler that refuses any global but numpy's
    array reconstruction: a crafted batch raises :class:`DataError` and runs nothing.
    """
    base = resolve_data_dir(data_dir)
    howto = (
        f"download cifar-10-python.tar.gz from {_CIFAR_URL}, unpack it and pass "
        f"--data-dir DIR (the folder holding cifar-10-batches-py) or set {ENV_VAR}=DIR"
    )
    if base is None:
        raise DataError(f"CIFAR-10 needs a data directory: {howto}")
    names = list(CIFAR10_MD5)
    root = None
    for cand in (base, base / "cifar-10-batches-py"):
        if all((cand / n).is_file() for n in names):
            root = cand
            break
    if root is None:
        raise DataError(f"CIFAR-10 not found in {base} (expected data_batch_1..5 and test_batch): {howto}")
    if verify:
        for n in names:
            _verify_cifar(root / n)
    parts = [_read_cifar_batch(root / n) for n in names]
    xtr = np.concatenate([p[0] for p in parts[:5]])
    ytr = np.concatenate([p[1] for p in parts[:5]])
    xte, yte = parts[5]
    mk = lambda x, y: ArrayDataset(  # noqa: E731
        torch.from_numpy(x.copy()), torch.from_numpy(y), "cifar10", 10, _CIFAR_MEAN, _CIFAR_STD
    )
    return mk(xtr, ytr), mk(xte, yte)


def synthetic(
    n_train: int = 512,
    n_test: int = 256,
    *,
    image_size: int = 28,
    channels: int = 1,
    num_classes: int = 10,
    noise: float = 0.5,
    seed: int = 0,
) -> tuple[ArrayDataset, ArrayDataset]:
    """A small learnable dataset: one random smooth prototype per class plus Gaussian noise (float images).

    >>> tr, te = synthetic(n_train=20, n_test=10, image_size=4, channels=3, num_classes=2)
    >>> tr.shape, len(te), sorted(set(tr.labels.tolist()))
    ((3, 4, 4), 10, [0, 1])
    """
    g = torch.Generator().manual_seed(int(seed))
    coarse = torch.randn(num_classes, channels, 4, 4, generator=g)
    protos = F.interpolate(coarse, size=(image_size, image_size), mode="bilinear", align_corners=False)

    def make(n: int) -> ArrayDataset:
        y = torch.randint(0, num_classes, (n,), generator=g)
        x = protos[y] + noise * torch.randn(n, channels, image_size, image_size, generator=g)
        return ArrayDataset(x.float(), y, "synthetic", num_classes, (0.0,), (1.0,))

    return make(n_train), make(n_test)


def load_dataset(
    name: str, data_dir: str | os.PathLike | None = None, *, verify: bool = True, **synthetic_kwargs: int
) -> tuple[ArrayDataset, ArrayDataset]:
    """``(train, test)`` of a dataset by name (see :data:`DATASETS`); ``verify`` checks the files' checksums."""
    if name == "fashion-mnist":
        return load_fashion_mnist(data_dir, verify=verify)
    if name == "cifar10":
        return load_cifar10(data_dir, verify=verify)
    if name == "synthetic":
        return synthetic(**synthetic_kwargs)  # type: ignore[arg-type]
    raise DataError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")


# ---------------------------------------------------------------------------------------------------- loading
def augment_crop_flip(x: Tensor, generator: torch.Generator, padding: int = 4) -> Tensor:
    """Random crop of each image after zero-padding by ``padding``, and a random horizontal flip (p = 1/2).

    Vectorized over the batch; the randomness comes only from ``generator``.

    >>> g = torch.Generator().manual_seed(0)
    >>> augment_crop_flip(torch.ones(2, 3, 8, 8), g).shape
    torch.Size([2, 3, 8, 8])
    """
    n, c, h, w = x.shape
    xp = F.pad(x, (padding, padding, padding, padding))
    oy = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    ox = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    ar_h, ar_w = torch.arange(h), torch.arange(w)
    rows = oy[:, None] + ar_h[None, :]
    cols = ox[:, None] + torch.where(flip[:, None], (w - 1 - ar_w)[None, :], ar_w[None, :])
    bi = torch.arange(n)[:, None, None, None]
    ci = torch.arange(c)[None, :, None, None]
    return xp[bi, ci, rows[:, None, :, None], cols[:, None, None, :]]


class Loader:
    """Deterministic mini-batches of an :class:`ArrayDataset`, sharded over DDP ranks.

    Args:
        dataset: the data.
        batch_size: examples per batch *per process*.
        shuffle: reshuffle every epoch (order from ``seed + epoch``, as :class:`DistributedSampler` does).
        seed: the seed of the order and of the augmentation.
        augment: random crop (padding 4) and horizontal flip, applied to the uint8 images before normalizing.
        drop_last: drop the last incomplete batch.
        num_replicas, rank: the DDP world; default: from ``torch.distributed`` when initialized, else 1 and 0.
            Under DDP each rank sees a disjoint shard of ``ceil(N / world)`` examples (padded by repetition, as
            :class:`DistributedSampler` does). ``shard_padding=False`` (for evaluation) gives each rank the
            strided shard ``rank::world`` with no repetition instead.
        shard_padding: see above.

    Call :meth:`set_epoch` before each epoch (as with ``DistributedSampler``).
    """

    def __init__(
        self,
        dataset: ArrayDataset,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        augment: bool = False,
        drop_last: bool = False,
        num_replicas: int | None = None,
        rank: int | None = None,
        shard_padding: bool = True,
    ) -> None:
        if batch_size < 1:
            raise DataError(f"batch_size must be >= 1, got {batch_size}")
        if num_replicas is None or rank is None:
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                num_replicas = torch.distributed.get_world_size() if num_replicas is None else num_replicas
                rank = torch.distributed.get_rank() if rank is None else rank
            else:
                num_replicas, rank = num_replicas or 1, rank or 0
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.augment = bool(augment)
        self.drop_last = bool(drop_last)
        self.num_replicas, self.rank = int(num_replicas), int(rank)
        self.shard_padding = bool(shard_padding)
        self.epoch = 0
        self.sampler: DistributedSampler | None = None
        if shard_padding:
            self.sampler = DistributedSampler(
                range(len(dataset)),  # type: ignore[arg-type]  # only len() is used
                num_replicas=self.num_replicas,
                rank=self.rank,
                shuffle=self.shuffle,
                seed=self.seed,
                drop_last=False,
            )

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch (changes the order and the augmentation when ``shuffle``/``augment``)."""
        self.epoch = int(epoch)
        if self.sampler is not None:
            self.sampler.set_epoch(self.epoch)

    def indices(self) -> Tensor:
        """This rank's example indices for the current epoch, in order."""
        if self.sampler is not None:
            return torch.tensor(list(iter(self.sampler)), dtype=torch.int64)
        n = len(self.dataset)
        order = torch.arange(n)
        if self.shuffle:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        return order[self.rank :: self.num_replicas]

    def __len__(self) -> int:
        n = (
            len(self.sampler)
            if self.sampler is not None
            else len(range(self.rank, len(self.dataset), self.num_replicas))
        )
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        idx = self.indices()
        g = None
        if self.augment:
            g = torch.Generator().manual_seed(_mix(self.seed, self.epoch, self.rank))
        for b in range(len(self)):
            sel = idx[b * self.batch_size : (b + 1) * self.batch_size]
            imgs = self.dataset.images[sel]
            if g is not None:
                imgs = augment_crop_flip(imgs, g)
            yield self.dataset.normalize(imgs), self.dataset.labels[sel]

    def take(self, n_batches: int) -> list[tuple[Tensor, Tensor]]:
        """The first ``n_batches`` batches of the current epoch as a list (a fixed set, e.g. for sharpness)."""
        out = []
        for i, batch in enumerate(self):
            if i >= n_batches:
                break
            out.append(batch)
        return out


def _mix(*values: int) -> int:
    """A 63-bit seed from integers (stable across processes and Python versions)."""
    h = hashlib.sha256(",".join(str(int(v)) for v in values).encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)
