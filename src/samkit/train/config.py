"""The configuration of a training run: :class:`TrainConfig`, its validation and the learning-rate schedule.

>>> cfg = TrainConfig(lr=0.1, schedule="decay", decay_frac=0.5)
>>> [cfg.lr_at(step, total=4) for step in range(5)]
[0.1, 0.1, 0.1, 0.05, 0.0]
>>> TrainConfig(rho=-1).validate()
Traceback (most recent call last):
...
samkit.train.config.TrainError: --rho must be a finite number >= 0, got -1
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch

from samkit._checks import integer, number
from samkit.data import DATASETS
from samkit.models import MODELS

__all__ = [
    "TrainConfig",
    "TrainError",
    "OPTIMIZERS",
    "SCHEDULES",
    "PERTURBATIONS",
    "DEVICES",
    "RESUMABLE_KEYS",
    "GSAM_ALPHA",
]

OPTIMIZERS = ("sgd", "sam", "usam", "unified", "asam", "gsam")
#: GSAM's α when ``--gsam-alpha`` is not given (Zhuang et al. 2022 use values in [0.01, 0.3])
GSAM_ALPHA = 0.1
SCHEDULES = ("cosine", "constant", "decay")
PERTURBATIONS = ("local", "global")
DEVICES = ("auto", "cpu", "cuda")
#: Config keys that may change between a run and its ``--resume`` (they do not change the numbers).
RESUMABLE_KEYS = ("out", "progress", "data_dir", "tensorboard", "quiet", "device", "verify_data")


class TrainError(ValueError):
    """A bad training configuration, missing data or an unreadable checkpoint (one line from the CLI, exit code 2)."""


@dataclass
class TrainConfig:
    """Everything a training run depends on (``samkit train --help`` documents each flag).

    ``schedule`` sets the per-step learning rate (:meth:`lr_at`): ``"cosine"`` (from ``lr`` to 0), ``"constant"``,
    or ``"decay"`` (constant, then linear to 0 over the last ``decay_frac`` of the steps).
    """

    dataset: str = "fashion-mnist"
    model: str = "cnn"
    optimizer: str = "sam"
    rho: float = 0.05
    lam: float | None = None
    gsam_alpha: float | None = None
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 128
    epochs: int = 10
    schedule: str = "cosine"
    decay_frac: float = 0.1
    seed: int = 0
    out: str | None = None
    data_dir: str | None = None
    verify_data: bool = True
    subset: int | None = None
    test_subset: int | None = None
    augment: bool | None = None
    sharpness_every: int = 0
    sharpness_batches: int = 2
    sharpness_batch_size: int = 256
    sharpness_iters: int = 20
    perturbation: str = "local"
    eval_batch_size: int = 1000
    threads: int = 0
    progress: bool = True
    tensorboard: bool = False
    quiet: bool = False
    device: str = "auto"
    synthetic_train: int = 512
    synthetic_test: int = 256
    image_size: int = 28
    channels: int = 1

    def validate(self) -> None:
        """Raise :class:`TrainError` naming the flag, the value and what is allowed."""
        try:
            self._validate()
        except ValueError as err:
            raise TrainError(str(err)) from None

    def _validate(self) -> None:
        for key, allowed in (
            ("dataset", DATASETS),
            ("model", MODELS),
            ("optimizer", OPTIMIZERS),
            ("schedule", SCHEDULES),
            ("perturbation", PERTURBATIONS),
            ("device", DEVICES),
        ):
            if getattr(self, key) not in allowed:
                raise ValueError(f"unknown {key} {getattr(self, key)!r}; choose from {', '.join(allowed)}")
        for key in ("rho", "momentum", "weight_decay"):
            number(getattr(self, key), _flag(key))
        number(self.lr, "--lr", strict=True)
        number(self.decay_frac, "--decay-frac", maximum=1.0, strict=True)
        if self.optimizer == "unified":
            if self.lam is None:
                raise ValueError("--optimizer unified needs --lam (a number in [0, 1])")
            number(self.lam, "--lam", maximum=1.0)
        elif self.lam is not None:
            raise ValueError(f"--lam is only used with --optimizer unified (got --optimizer {self.optimizer})")
        if self.gsam_alpha is not None:
            if self.optimizer != "gsam":
                raise ValueError(f"--gsam-alpha is only used with --optimizer gsam (got --optimizer {self.optimizer})")
            number(self.gsam_alpha, "--gsam-alpha")
        for key in ("batch_size", "epochs", "eval_batch_size", "sharpness_batches", "sharpness_batch_size"):
            integer(getattr(self, key), _flag(key), minimum=1)
        for key in ("sharpness_every", "threads", "sharpness_iters", "seed"):
            integer(getattr(self, key), _flag(key), minimum=0)
        for key in ("subset", "test_subset"):
            if getattr(self, key) is not None:
                integer(getattr(self, key), _flag(key), minimum=1)
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda: no CUDA GPU is available (use --device cpu)")
        if self.dataset == "synthetic":
            integer(self.channels, "--channels", minimum=1, maximum=3)
            if self.channels == 2:
                raise ValueError("--channels must be 1 or 3, got 2")
            integer(self.image_size, "--image-size", minimum=4)
            integer(self.synthetic_train, "--synthetic-train", minimum=1)
            integer(self.synthetic_test, "--synthetic-test", minimum=1)

    def lr_at(self, step: int, total: int) -> float:
        """The learning rate of step ``step`` (0-based) of ``total``.

        ``cosine``: ``lr·(1 + cos(π·step/total))/2``; ``constant``: ``lr``; ``decay``: ``lr`` up to step
        ``(1 − decay_frac)·total``, then linear to 0 at ``total``.
        """
        if self.schedule == "constant" or total <= 0:
            return self.lr
        step = min(step, total)
        if self.schedule == "decay":
            span = self.decay_frac * total
            return self.lr * min(1.0, (total - step) / span)
        return self.lr * 0.5 * (1.0 + math.cos(math.pi * step / total))

    def changed_from(self, saved: dict[str, Any]) -> list[str]:
        """The keys (outside :data:`RESUMABLE_KEYS`) whose value differs from the saved config ``saved``.

        A key the saved config lacks (written before the key existed) counts as its default.
        """
        now = dataclasses.asdict(self)
        defaults = dataclasses.asdict(TrainConfig())
        return [k for k in now if k not in RESUMABLE_KEYS and saved.get(k, defaults[k]) != now[k]]


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")
