"""One run at a time per experiment folder: an advisory lock on ``EXP_DIR/.lock``."""

from __future__ import annotations

import contextlib
import fcntl
import os
import platform
from collections.abc import Iterator
from pathlib import Path

from samkit._io import open_regular
from samkit.experiments.base import ConfigError

__all__ = ["LockedError", "folder_lock"]


class LockedError(ConfigError):
    """Another process is writing to the same experiment folder."""


@contextlib.contextmanager
def folder_lock(exp_dir: Path) -> Iterator[None]:
    """Hold ``EXP_DIR/.lock`` (an advisory ``flock``) for the duration of a run.

    A second ``samkit run`` on the same folder gets a :class:`LockedError` at once instead of redoing the work.
    The kernel drops the lock when its process dies, so a killed run never leaves a lock that blocks.
    """
    exp_dir.mkdir(parents=True, exist_ok=True)
    path = exp_dir / ".lock"
    # never through a link: a planted `.lock -> ~/notes.txt` must not make samkit truncate the user's file
    fh = os.fdopen(open_regular(path, os.O_RDWR | os.O_CREAT), "r+")
    try:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            raise LockedError(
                f"{str(exp_dir)!r} is in use by {holder}; wait for it to finish or choose another --out"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"samkit pid {os.getpid()} on {platform.node()}")
        fh.flush()
        yield
    finally:
        fh.close()  # closing releases the flock
