"""What a training run writes: ``metrics.csv``, ``summary.json``, ``config.json`` and ``checkpoint.pt``.

Every file is written atomically (only by the main process under DDP). Checkpoints hold only tensors and plain
containers of numbers and strings, and load with ``torch.load(weights_only=True)``: a checkpoint that asks to run
code, or a truncated one, is refused with a one-line :class:`TrainError` and nothing in it is executed.

>>> import tempfile
>>> path = Path(tempfile.mkdtemp()) / "checkpoint.pt"
>>> _ = path.write_bytes(b"not a checkpoint")
>>> load_checkpoint(path)  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
samkit.train.config.TrainError: .../checkpoint.pt is not a readable checkpoint: ...
"""

from __future__ import annotations

import json
import pickle
import re
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from samkit._io import atomic_write, atomic_write_text, jsonable, write_csv
from samkit.train.config import TrainConfig, TrainError

__all__ = ["CSV_FIELDS", "CHECKPOINT_VERSION", "Records", "load_checkpoint", "save_checkpoint", "summarize"]

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
CHECKPOINT_VERSION = 1
_CHECKPOINT_KEYS = ("version", "config", "epoch", "step", "model", "optimizer", "rng", "rows", "status", "summary")


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
    if ckpt["version"] != CHECKPOINT_VERSION or not isinstance(ckpt["config"], dict):
        raise TrainError(f"{path} is a checkpoint of version {ckpt['version']!r}; this samkit reads version 1")
    return ckpt


def _corrupt(path: Path, err: BaseException) -> str:
    return (
        f"{path} is not a readable checkpoint: the file is truncated or corrupt, or not a checkpoint "
        f"({type(err).__name__}); "
        "restore it from a copy or start a new run in another --out"
    )


def summarize(
    cfg: TrainConfig,
    rows: list[dict[str, Any]],
    status: str,
    diverged: tuple[int | None, int | None],
    elapsed: float,
    world: int,
) -> dict[str, Any]:
    """The run's summary: status, where it diverged (epoch, step), final and best metrics, history and config."""
    ok = [r for r in rows if r.get("status") == "ok"]
    last = ok[-1] if ok else {}
    eigs = [r["top_eigenvalue"] for r in ok if r.get("top_eigenvalue") is not None]
    return {
        "status": status,
        "diverged_epoch": diverged[0],
        "diverged_step": diverged[1],
        "epochs_done": len(ok),
        "final_test_acc": last.get("test_acc"),
        "final_test_loss": last.get("test_loss"),
        "final_train_loss": last.get("train_loss"),
        "final_train_acc": last.get("train_acc"),
        "best_test_acc": max((r["test_acc"] for r in ok), default=None),
        "final_top_eigenvalue": eigs[-1] if eigs else None,
        "seconds": round(elapsed, 2),
        "world_size": world,
        "history": rows,
        "config": asdict(cfg),
    }


class Records:
    """The files of one run in ``out`` (nothing is written when ``out`` is ``None`` or ``enabled`` is false)."""

    def __init__(self, out: str | Path | None, enabled: bool = True) -> None:
        self.out = Path(out) if out else Path()
        self.enabled = enabled and bool(out)
        self.checkpoint = self.out / "checkpoint.pt" if out else None

    def has_checkpoint(self) -> bool:
        return self.checkpoint is not None and self.checkpoint.exists()

    def load(self) -> dict[str, Any]:
        """The run's checkpoint (see :func:`load_checkpoint`)."""
        if not self.has_checkpoint():
            raise TrainError(f"--resume: no checkpoint at {self.checkpoint}; run without --resume to start")
        return load_checkpoint(self.checkpoint)

    def start(self, cfg: TrainConfig) -> None:
        """Create the folder and write ``config.json``."""
        if self.enabled:
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.out / "config.json", json.dumps(asdict(cfg), indent=1) + "\n")

    def write(self, rows: list[dict[str, Any]], summary: dict[str, Any]) -> None:
        """Rewrite ``metrics.csv`` and ``summary.json``."""
        if self.enabled:
            write_csv(self.out / "metrics.csv", rows, CSV_FIELDS)
            atomic_write_text(self.out / "summary.json", json.dumps(jsonable(summary), indent=1) + "\n")

    def save(self, state: dict[str, Any]) -> None:
        """Write ``checkpoint.pt``; ``state["summary"]`` is made JSON-safe (plain numbers and strings)."""
        if self.enabled:
            save_checkpoint(self.checkpoint, dict(state, summary=jsonable(state["summary"])))
