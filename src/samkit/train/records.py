"""What a training run writes: ``metrics.csv``, ``summary.json``, ``config.json`` and ``checkpoint.pt``.

Only the main process writes (under DDP), and every epoch costs the same few writes however long the run: its row
is appended to ``metrics.csv`` (and fsynced), ``summary.json`` is rewritten without the history while the run goes
on, and the checkpoint records how many rows and bytes of ``metrics.csv`` it covers rather than the rows. A resumed
run cuts ``metrics.csv`` back to what its checkpoint covers (a row appended after the last checkpoint is dropped,
and recomputed identically) and reads the rows back from it (floats are written with ``repr``: exact). When the run
ends (completed or diverged) ``summary.json`` and the checkpoint hold the whole history, once. ``summary.json``,
``config.json`` and the checkpoint are written atomically; a reader never sees a torn row of ``metrics.csv`` that a
resume would keep.

Checkpoints hold only tensors and plain containers of numbers and strings, and load with
``torch.load(weights_only=True)``: a checkpoint that asks to run code, or a truncated one, is refused with a
one-line :class:`TrainError` and nothing in it is executed.

>>> import tempfile
>>> path = Path(tempfile.mkdtemp()) / "checkpoint.pt"
>>> _ = path.write_bytes(b"not a checkpoint")
>>> load_checkpoint(path)  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
samkit.train.config.TrainError: .../checkpoint.pt is not a readable checkpoint: ...
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import pickle
import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from samkit._io import atomic_write, atomic_write_text, claim_folder, csv_text, file_head, jsonable, write_csv
from samkit.train.config import TrainConfig, TrainError

__all__ = [
    "CSV_FIELDS",
    "CHECKPOINT_VERSION",
    "History",
    "Records",
    "is_run_entry",
    "load_checkpoint",
    "save_checkpoint",
    "summarize",
]

#: The columns of ``metrics.csv``, one row per epoch.
CSV_FIELDS = (
    "epoch",
    "step",
    "lr",
    "train_loss",
    "train_acc",
    "test_loss",
    "test_acc",
    "grad_norm",
    "eps_norm",
    "top_eigenvalue",
    "seconds",
    "status",
)
#: 2: the rows live in ``metrics.csv`` until the run ends (``metrics_rows``, ``metrics_bytes``); 1: in the checkpoint.
CHECKPOINT_VERSION = 2
_READS = (1, 2)
_CHECKPOINT_KEYS = ("version", "config", "epoch", "step", "model", "optimizer", "rng", "rows", "status", "summary")
_INT_FIELDS = ("epoch", "step")
_HEADER = ",".join(CSV_FIELDS) + "\n"
_RUN_FILES = ("config.json", "metrics.csv", "summary.json", "checkpoint.pt")
_TEMP = re.compile(r"\.(?:config\.json|metrics\.csv|summary\.json|checkpoint\.pt)\.[0-9a-f]{12}\.tmp")


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically with :func:`torch.save`."""
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint with the safe loader (``weights_only=True``) and check it is a samkit checkpoint.

    Raises :class:`TrainError` (one line naming the file) when the loader refuses it (it asks to run code: not a
    samkit checkpoint, or written by an untrusted tool), when it is truncated or corrupt, or when it lacks a samkit
    checkpoint's keys.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # protocol notes of the weights-only unpickler
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL (\S+)", str(err))  # the weights-only loader met a global it does not allow
        if found is None:
            raise TrainError(_corrupt(path, err)) from None
        raise TrainError(
            f"{path} is not a samkit checkpoint or was written by an untrusted tool: it asks to load "
            f"{found.group(1)} (refused; nothing in it was run)"
        ) from None
    except Exception as err:  # noqa: BLE001 - any failure to decode an untrusted file is the same one-line error
        raise TrainError(_corrupt(path, err)) from None
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in _CHECKPOINT_KEYS):
        got = sorted(map(str, ckpt)) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise TrainError(
            f"{path} is not a samkit checkpoint (expected the keys {', '.join(_CHECKPOINT_KEYS)}; got {got})"
        )
    if ckpt["version"] not in _READS or not isinstance(ckpt["config"], dict):
        raise TrainError(
            f"{path} is a checkpoint of version {ckpt['version']!r}; this samkit reads versions "
            f"{', '.join(map(str, _READS))}"
        )
    return ckpt


def _corrupt(path: Path, err: BaseException) -> str:
    return (
        f"{path} is not a readable checkpoint: the file is truncated or corrupt, or not a checkpoint "
        f"({type(err).__name__}); "
        "restore it from a copy or start a new run in another --out"
    )


class History:
    """A run's rows so far and what its summary needs of them, brought up to date in O(1) per row.

    >>> h = History([{"status": "ok", "test_acc": 0.5}, {"status": "ok", "test_acc": 0.25, "top_eigenvalue": 3.0}])
    >>> h.ok, h.best_test_acc, h.last_eig, len(h.rows)
    (2, 0.5, 3.0, 2)
    """

    def __init__(self, rows: Iterable[dict[str, Any]] = ()) -> None:
        self.rows: list[dict[str, Any]] = []
        self.ok = 0
        self.last_ok: dict[str, Any] = {}
        self.best_test_acc: float | None = None
        self.last_eig: float | None = None
        for row in rows:
            self.append(row)

    def append(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        if row.get("status") != "ok":
            return
        self.ok += 1
        self.last_ok = row
        acc = row["test_acc"]
        if self.best_test_acc is None or acc > self.best_test_acc:  # as max() over the rows
            self.best_test_acc = acc
        if row.get("top_eigenvalue") is not None:
            self.last_eig = row["top_eigenvalue"]


def summarize(
    cfg: TrainConfig,
    rows: Sequence[dict[str, Any]] | History,
    status: str,
    diverged: tuple[int | None, int | None],
    elapsed: float,
    world: int,
    *,
    history: bool = True,
) -> dict[str, Any]:
    """The run's summary: status, where it diverged (epoch, step), final and best metrics, history and config.

    ``history=False`` leaves the rows out (the summary of a run still going: its rows are in ``metrics.csv``).
    """
    h = rows if isinstance(rows, History) else History(rows)
    last = h.last_ok
    out = {
        "status": status,
        "diverged_epoch": diverged[0],
        "diverged_step": diverged[1],
        "epochs_done": h.ok,
        "final_test_acc": last.get("test_acc"),
        "final_test_loss": last.get("test_loss"),
        "final_train_loss": last.get("train_loss"),
        "final_train_acc": last.get("train_acc"),
        "best_test_acc": h.best_test_acc,
        "final_top_eigenvalue": h.last_eig,
        "seconds": round(elapsed, 2),
        "world_size": world,
        "history": h.rows,
        "config": asdict(cfg),
    }
    if not history:
        del out["history"]
    return out


def is_run_entry(path: Path) -> bool:
    """Whether ``path``, an entry of a run folder without samkit's marker, is one a training run writes (a folder
    written before the marker existed): its files, recognised by their first bytes, the CLI's ``.lock``, a
    temporary file of an atomic write, or the TensorBoard folder."""
    name = path.name
    if path.is_symlink():
        return False
    if name == ".lock" or _TEMP.fullmatch(name):
        return path.is_file()
    if name == "tensorboard":
        return path.is_dir() and all(p.name.startswith("events.out.tfevents.") for p in path.iterdir())
    if name not in _RUN_FILES or not path.is_file():
        return False
    head = file_head(path)
    if head is None:
        return False
    if name == "metrics.csv":
        return head.startswith(_HEADER.encode())
    if name == "checkpoint.pt":
        return head.startswith(b"PK\x03\x04")  # torch.save's zip
    if name == "config.json":
        return head.startswith(b'{\n "dataset": ') and b'"optimizer": ' in head
    return head.startswith(b'{\n "status": ') and b'"diverged_epoch": ' in head  # summary.json


def _row_text(rows: Iterable[dict[str, Any]]) -> str:
    """Rows of ``metrics.csv`` without the header."""
    return csv_text(rows, CSV_FIELDS)[len(_HEADER) :]


def _parse_rows(text: str) -> list[dict[str, Any]]:
    """The rows of ``metrics.csv`` text as the loop made them (an empty cell is a missing key)."""
    reader = csv.reader(io.StringIO(text, newline=""))
    if next(reader, None) != list(CSV_FIELDS):
        raise ValueError("its header is not samkit's")
    rows = []
    for cells in reader:
        if len(cells) != len(CSV_FIELDS):
            raise ValueError(f"a row has {len(cells)} cells instead of {len(CSV_FIELDS)}")
        row: dict[str, Any] = {}
        for key, cell in zip(CSV_FIELDS, cells):
            if cell != "":
                row[key] = int(cell) if key in _INT_FIELDS else cell if key == "status" else float(cell)
        rows.append(row)
    return rows


class Records:
    """The files of one run in ``out`` (nothing is written when ``out`` is ``None`` or ``enabled`` is false).

    Each epoch: :meth:`append` its row to ``metrics.csv``, :meth:`write_summary`, :meth:`save` the checkpoint
    (which records :attr:`metrics_bytes`, the length of ``metrics.csv`` it covers).
    """

    def __init__(self, out: str | Path | None, enabled: bool = True) -> None:
        self.out = Path(out) if out else Path()
        self.enabled = enabled and bool(out)
        self.checkpoint = self.out / "checkpoint.pt" if out else None
        self.metrics = self.out / "metrics.csv"
        #: the length of ``metrics.csv`` (its header and complete rows) as this process wrote it, and their hash
        self.metrics_bytes = 0
        self._metrics_hash = hashlib.sha256()

    def claim(self) -> None:
        """Make ``out`` the run's folder, or refuse it (:func:`samkit._io.claim_folder`): a folder holding files a
        run does not write raises :class:`samkit._io.UnsafePathError`, before anything is written or read there."""
        if self.enabled:
            claim_folder(self.out, ours=is_run_entry, what="the run")

    def has_checkpoint(self) -> bool:
        return self.checkpoint is not None and self.checkpoint.exists()

    def load(self) -> dict[str, Any]:
        """The run's checkpoint (see :func:`load_checkpoint`)."""
        if not self.has_checkpoint():
            raise TrainError(f"--resume: no checkpoint at {self.checkpoint}; run without --resume to start")
        assert self.checkpoint is not None  # has_checkpoint() is False without one
        return load_checkpoint(self.checkpoint)

    def rows_of(self, ckpt: dict[str, Any]) -> list[dict[str, Any]]:
        """The rows a checkpoint covers: its own (a finished run, or version 1), or the first ``metrics_bytes`` of
        ``metrics.csv`` (every process may read them; only the main one cuts the file, in :meth:`start`)."""
        if isinstance(ckpt["rows"], list):
            return list(ckpt["rows"])
        n, size = ckpt.get("metrics_rows"), ckpt.get("metrics_bytes")
        if not (isinstance(n, int) and isinstance(size, int) and n >= 0 and size >= 0):
            raise TrainError(f"{self.checkpoint} is not a samkit checkpoint (no rows and no metrics.csv length)")
        damaged = f"--resume: {self.metrics} does not hold the {n} rows {self.checkpoint} covers"
        advice = "restore it from a copy or start a new run in another --out"
        try:
            with open(self.metrics, "rb") as fh:
                data = fh.read(size)
        except OSError as err:
            raise TrainError(f"{damaged} ({err.strerror or err}); {advice}") from None
        if len(data) < size:
            raise TrainError(f"{damaged} (it was cut: {len(data)} of {size} bytes); {advice}")
        digest = ckpt.get("metrics_sha256")
        if digest is not None and hashlib.sha256(data).hexdigest() != digest:
            raise TrainError(f"{damaged} (its rows were edited: their checksum differs); {advice}")
        try:
            rows = _parse_rows(data.decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as err:
            raise TrainError(f"{damaged} ({err}); {advice}") from None
        if len(rows) != n or (rows and rows[-1].get("epoch") != ckpt["epoch"]):
            raise TrainError(f"{damaged} (it was edited: {len(rows)} rows); {advice}")
        return rows

    def start(self, cfg: TrainConfig, rows: Sequence[dict[str, Any]], cut_to: int | None = None) -> None:
        """Write ``config.json`` and begin ``metrics.csv``: cut it to ``cut_to`` bytes (a resumed run: the rows its
        checkpoint covers, read by :meth:`rows_of`), or write it anew with ``rows`` (a new run: none)."""
        if not self.enabled:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.out / "config.json", json.dumps(asdict(cfg), indent=1) + "\n")
        if cut_to is None:
            write_csv(self.metrics, rows, CSV_FIELDS)
        else:
            with open(self.metrics, "r+b") as fh:  # drops a row appended after the checkpoint (a killed run)
                fh.truncate(cut_to)
                fh.flush()
                os.fsync(fh.fileno())
        with open(self.metrics, "rb") as fh:  # once per run: later rows are hashed as they are appended
            data = fh.read()
        self.metrics_bytes, self._metrics_hash = len(data), hashlib.sha256(data)

    def append(self, rows: Sequence[dict[str, Any]]) -> None:
        """Append ``rows`` to ``metrics.csv`` and fsync them: one write, whatever the length of the history."""
        if not self.enabled or not rows:
            return
        flags = os.O_WRONLY | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        data = _row_text(rows).encode("utf-8")
        with os.fdopen(os.open(self.metrics, flags), "ab") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
            size = os.fstat(fh.fileno()).st_size
        if size != self.metrics_bytes + len(data):
            raise OSError(f"{self.metrics} changed while the run was writing it (another process?)")
        self.metrics_bytes = size
        self._metrics_hash.update(data)

    def write_summary(self, summary: dict[str, Any]) -> None:
        """Rewrite ``summary.json`` (atomically)."""
        if self.enabled:
            atomic_write_text(self.out / "summary.json", json.dumps(jsonable(summary), indent=1) + "\n")

    def save(self, state: dict[str, Any]) -> None:
        """Write ``checkpoint.pt`` with the length and checksum of the ``metrics.csv`` it covers;
        ``state["summary"]`` is made JSON-safe (plain numbers and strings)."""
        if self.enabled:
            state = dict(
                state,
                summary=jsonable(state["summary"]),
                metrics_bytes=self.metrics_bytes,
                metrics_sha256=self._metrics_hash.hexdigest(),
            )
            assert self.checkpoint is not None  # enabled only with an out folder
            save_checkpoint(self.checkpoint, state)
