"""Tiny CIFAR-10 folders in the official format, for the data, training and security tests.

The official ``cifar-10-batches-py`` files were written by Python 2's cPickle (protocol 2): byte strings as
``BINSTRING`` opcodes and arrays rebuilt by ``numpy.core.multiarray._reconstruct``. :func:`py2_pickle` writes the
same opcodes from Python 3, so the tests read what the real files hold.
"""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np

NAMES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


class _Py2Pickler(pickle._Pickler):  # the pure-Python pickler, whose dispatch table can be extended
    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def py2_pickle(obj: object) -> bytes:
    """``obj`` pickled as Python 2 would (protocol 2, byte strings as ``str``, numpy 1.x module names)."""
    import io

    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def batch(n: int, seed: int) -> dict[bytes, object]:
    """A batch dict with the official keys: n random images (uint8, N x 3072) and python-int labels."""
    rng = np.random.default_rng(seed)
    return {
        b"batch_label": b"training batch 1 of 5",
        b"labels": rng.integers(0, 10, n).tolist(),
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        b"filenames": [f"img_{i}.png".encode() for i in range(n)],
    }


def write_folder(root: Path, n: int = 6, seed: int = 1) -> dict[str, dict[bytes, object]]:
    """Write the six batches of n images each into ``root`` (created); return what was written."""
    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for i, name in enumerate(NAMES):
        out[name] = batch(n, seed + i)
        (root / name).write_bytes(py2_pickle(out[name]))
    return out
