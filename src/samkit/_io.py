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
import errno
import io
import math
import os
import secrets
import stat
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "atomic_write",
    "atomic_write_text",
    "write_csv",
    "csv_text",
    "jsonable",
    "UnsafePathError",
    "refuse_links",
    "claim_folder",
    "open_regular",
    "file_head",
    "MARKER",
]


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
        try:
            write(tmp)
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        except OSError as err:  # disk full, quota, file size limit: name the file being written
            if err.filename is None and err.errno is not None:
                raise OSError(err.errno, err.strerror, str(path)) from err
            raise
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


class UnsafePathError(ValueError):
    """A results folder samkit would write into (or read from) holds a symbolic link, or files samkit did not write:
    following it could read, overwrite or delete files outside the folder the user named."""


def refuse_links(root: str | Path, inside: str | Path | None = None) -> None:
    """Raise :class:`UnsafePathError` when ``inside`` (default ``root``) or anything under it, or any folder between
    ``root`` and ``inside``, is a symbolic link. ``root`` itself may be a link (the user named it); what samkit finds
    inside it may not: a shared results folder must not be able to send samkit's writes, deletes or reads elsewhere.

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> (d / "E4" / "data").mkdir(parents=True)
    >>> refuse_links(d)
    >>> (d / "E4" / "figures").symlink_to("/tmp")
    >>> refuse_links(d)
    Traceback (most recent call last):
    ...
    samkit._io.UnsafePathError: ... is a symbolic link (to '/tmp'); samkit does not follow links inside a results folder: remove it
    """
    root = Path(root)
    target = Path(inside) if inside is not None else root
    rel = target.relative_to(root) if target != root else Path()
    walk = root
    for part in rel.parts:
        walk = walk / part
        if walk.is_symlink():
            _link_error(walk)
    if not target.exists() or not target.is_dir() or (target != root and target.is_symlink()):
        return
    for dirpath, dirnames, filenames in os.walk(target, followlinks=False):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            if path.is_symlink():
                _link_error(path)


def _link_error(path: Path) -> None:
    raise UnsafePathError(
        f"{str(path)!r} is a symbolic link (to {os.readlink(path)!r}); samkit does not follow links inside a results "
        "folder: remove it"
    )


#: The file samkit leaves in every folder it writes results into: a later run may write there again.
MARKER = ".samkit"


def claim_folder(folder: str | Path, *, ours: Callable[[Path], bool], what: str) -> Path:
    """Make ``folder`` samkit's to write into, or refuse it: a new or empty folder, or one that holds samkit's
    :data:`MARKER`, or one whose every entry ``ours(path)`` recognises as samkit's own (a folder written by an older
    samkit), is marked and returned; a folder holding anything else (``--out .`` in a project, a home folder) raises
    :class:`UnsafePathError`, so samkit never overwrites a file it did not write. Links inside are refused
    (:func:`refuse_links`).

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> claim_folder(d / "new", ours=lambda p: False, what="results folder") == d / "new", (d / "new" / MARKER).is_file()
    (True, True)
    >>> (d / "project").mkdir(); _ = (d / "project" / "README.md").write_text("mine")
    >>> claim_folder(d / "project", ours=lambda p: False, what="results folder")
    Traceback (most recent call last):
    ...
    samkit._io.UnsafePathError: results folder ... holds files samkit did not write ('README.md'): ...
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UnsafePathError(f"{what} {str(folder)!r} exists and is not a folder: choose a new or empty folder")
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / MARKER
    if marker.is_symlink() or (marker.exists() and not marker.is_file()):
        raise UnsafePathError(f"{str(marker)!r} is not samkit's marker file: remove it")
    entries = [p for p in folder.iterdir() if p.name != MARKER]
    if not marker.exists():
        foreign = sorted(p.name for p in entries if p.is_symlink() or not ours(p))
        if foreign:
            shown = ", ".join(repr(n) for n in foreign[:3]) + (
                f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
            )
            raise UnsafePathError(
                f"{what} {str(folder)!r} holds files samkit did not write ({shown}): samkit writes only into a new or "
                "empty folder, or one it wrote before; choose another folder, e.g. a new subfolder"
            )
    refuse_links(folder)
    if not marker.exists():
        atomic_write_text(marker, f"samkit writes {what} here; files in this folder may be replaced by samkit.\n")
    return folder


def open_regular(path: str | Path, flags: int = os.O_RDONLY, mode: int = 0o644) -> int:
    """A descriptor of the regular file ``path`` opened with ``flags`` — never through a symbolic link (``O_NOFOLLOW``)
    and never blocking on a FIFO (``O_NONBLOCK``) — else :class:`UnsafePathError` (a link, a folder, a FIFO, a device);
    :class:`FileNotFoundError` when it is not there (without ``O_CREAT``).

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> (d / "lock").symlink_to(d / "notes.txt")
    >>> open_regular(d / "lock", os.O_RDWR | os.O_CREAT)
    Traceback (most recent call last):
    ...
    samkit._io.UnsafePathError: ... is a symbolic link; samkit does not follow links inside a results folder: remove it
    >>> (d / "notes.txt").exists()
    False
    """
    path = Path(path)
    extra = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags | extra, mode)
    except OSError as err:
        if err.errno == errno.ELOOP or path.is_symlink():
            raise UnsafePathError(
                f"{str(path)!r} is a symbolic link; samkit does not follow links inside a results folder: remove it"
            ) from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UnsafePathError(
            f"{str(path)!r} is not a regular file (a folder, a FIFO or a device); samkit reads only the files it "
            "wrote: remove it"
        )
    os.set_blocking(fd, True)
    return fd


def file_head(path: str | Path, n: int = 4096) -> bytes | None:
    """The first ``n`` bytes of the regular file ``path`` (read without following a link), or None when it cannot be
    read that way: what recognising a file samkit wrote needs.

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "a.csv").write_text("run,rho\\n")
    >>> file_head(d / "a.csv", 4), file_head(d / "missing.csv")
    (b'run,', None)
    """
    try:
        with os.fdopen(open_regular(path), "rb") as fh:
            return fh.read(n)
    except (OSError, UnsafePathError):
        return None
