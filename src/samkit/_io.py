"""Files samkit writes: atomic writes, one CSV writer and one JSON-safe converter.

A write goes to a temporary file in the target's folder, is fsynced, then moved into place with ``os.replace``:
a reader (or a rerun after a crash) sees either the old file or the complete new one, never a partial one.

>>> import tempfile, pathlib
>>> p = pathlib.Path(tempfile.mkdtemp()) / "a" / "x.txt"
>>> atomic_write_text(p, "hello")
>>> p.read_text()
'hello'
"""

from __future__ import annotations

import csv
import io
import math
import os
import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["atomic_write", "atomic_write_text", "write_csv", "csv_text", "jsonable"]


def atomic_write(path: str | Path, write: Callable[[str], None], *, suffix: str = ".tmp") -> None:
    """Call ``write(tmp_path)`` to produce the file, then move it onto ``path`` atomically.

    The parent folder is created. The file gets the mode a plain ``open(path, "w")`` would give it (``0o666``
    less the process umask: ``0o644`` under the usual umask 022), so results can be shared and served. On any
    error the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_temp_file(path, suffix)
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _new_temp_file(path: Path, suffix: str) -> str:
    """Create an empty, new file next to ``path``, named ``.NAME.RANDOM.SUFFIX``, and return its path.

    Unlike :func:`tempfile.mkstemp` (always mode 0600) the file is created with mode ``0o666`` and the kernel
    applies the umask, so there is no need to read the umask (``os.umask`` can only be read by setting it, which
    races with other threads).
    """
    for _ in range(100):
        tmp = str(path.parent / f".{path.name}.{secrets.token_hex(6)}{suffix}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(f"could not create a temporary file next to {str(path)!r}")


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8, newlines as given) to ``path`` atomically."""

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            fh.write(text)

    atomic_write(path, write)


def csv_text(rows: Iterable[Mapping[str, Any]], fields: Sequence[str] | None = None) -> str:
    """Tidy rows as CSV text: the header is ``fields``, or the union of the rows' keys in first-seen order.

    Floats are written with ``repr`` (they read back exactly); ``None`` and missing keys are empty cells.

    >>> print(csv_text([{"a": 0.1, "b": None}, {"a": 2, "c": "x"}]), end="")
    a,b,c
    0.1,,
    2,,x
    """
    rows = [dict(r) for r in rows]
    if fields is None:
        names: dict[str, None] = {}
        for r in rows:
            names.update(dict.fromkeys(r))
        fields = list(names)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(fields), lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: (repr(float(v)) if isinstance(v, float) else v) for k, v in r.items()})
    return buf.getvalue()


def write_csv(path: str | Path, rows: Iterable[Mapping[str, Any]], fields: Sequence[str] | None = None) -> None:
    """Atomically write tidy rows as CSV (see :func:`csv_text` for the format)."""
    atomic_write_text(path, csv_text(rows, fields))


def jsonable(obj: Any) -> Any:
    """``obj`` made JSON-safe: numpy/torch values to Python numbers and lists, non-finite floats to strings
    (``"nan"``, ``"inf"``), tuples to lists, mapping keys to strings.

    >>> jsonable({1: (np.float64(0.5), float("nan")), "b": np.arange(2)})
    {'1': [0.5, 'nan'], 'b': [0, 1]}
    """
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        x = float(obj)
        return x if math.isfinite(x) else str(x)
    if hasattr(obj, "tolist"):  # numpy arrays, torch tensors
        return jsonable(obj.tolist())
    return obj
