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
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, overload

import torch

from samkit._checks import integer, number
from samkit.data import DATASETS
from samkit.models import MODELS, build_model
from samkit.optim import registry, sam_on_param_groups
from samkit.optim.gsam import DEFAULT_ALPHA

__all__ = [
    "TrainConfig",
    "TrainError",
    "OPTIMIZERS",
    "SCHEDULES",
    "PERTURBATIONS",
    "PRECISIONS",
    "SAM_ON",
    "DEVICES",
    "RESUMABLE_KEYS",
    "GSAM_ALPHA",
    "MAX_EPOCHS",
    "OPTIONS",
    "ONLY_FOR",
    "physical_memory",
]


class _Registered(Sequence[str]):
    """The names of :mod:`samkit.optim.registry`, read at each use: a variant registered later is one of them."""

    @overload
    def __getitem__(self, i: int) -> str: ...
    @overload
    def __getitem__(self, i: slice) -> Sequence[str]: ...
    def __getitem__(self, i: int | slice) -> str | Sequence[str]:
        return registry.names()[i]

    def __len__(self) -> int:
        return len(registry.names())

    def __repr__(self) -> str:
        return repr(registry.names())


#: The ``--optimizer`` choices: every optimizer of :mod:`samkit.optim.registry` (``sgd``, ``sam``, ``usam``,
#: ``unified``, ``asam``, ``gsam`` and any registered variant).
OPTIMIZERS: Sequence[str] = _Registered()
#: GSAM's α when ``--gsam-alpha`` is not given (Zhuang et al. 2022 use values in [0.01, 0.3])
GSAM_ALPHA = DEFAULT_ALPHA


def _check_sam_start(value: Any, flag: str, what: str) -> None:
    """``--sam-start``: 0 (SAM from the first step), a fraction in (0, 1) of the steps, or a whole number of steps."""
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value) and value >= 0
    if not (ok and (value < 1 or float(value).is_integer())):
        raise ValueError(
            f"{flag} must be {what} (0.5: SAM from half-way; 1000: SAM after 1000 base steps), got {value!r}"
        )


#: ``--sam-on``: ``all`` (every parameter perturbed, the default) or ``norm`` (SAM-ON: only the normalization layers'
#: affine parameters, :func:`samkit.sam_on_param_groups`)
SAM_ON = ("all", "norm")
#: The settings only some optimizers take (``None`` unless given): what each is, and its bounds (for a number: the
#: keyword arguments of :func:`samkit._checks.number`; ``choices``: the allowed strings; ``check``: a function that
#: raises ValueError). Which optimizer takes which is the registry's ``takes`` / ``needs``.
OPTIONS: dict[str, tuple[str, dict[str, Any]]] = {
    "lam": ("a number in [0, 1]", {"maximum": 1.0}),
    "gsam_alpha": ("a number >= 0", {}),
    "sam_start": ("a fraction in (0, 1) of the steps or a whole number of steps", {"check": _check_sam_start}),
    "sam_on": (f"one of {', '.join(SAM_ON)}", {"choices": SAM_ON}),
}
SCHEDULES = ("cosine", "constant", "decay")
PERTURBATIONS = ("local", "global")
#: ``--precision``: ``fp32``, or ``bf16`` (bfloat16 autocast around the forward passes, float32 weights, no scaler)
PRECISIONS = ("fp32", "bf16")
DEVICES = ("auto", "cpu", "cuda")
#: Config keys that may change between a run and its ``--resume`` (they do not change the numbers).
RESUMABLE_KEYS = ("out", "progress", "data_dir", "tensorboard", "quiet", "device", "verify_data")
#: The most epochs a run may ask for: more is a typo (``1e9``) that would run for ever.
MAX_EPOCHS = 1_000_000


class _OnlyFor(Mapping[str, str]):
    """:data:`ONLY_FOR`, read from the registry at each use."""

    def _now(self) -> dict[str, str]:
        return {key: owners[0] for key in OPTIONS if len(owners := registry.takers(key)) == 1}

    def __getitem__(self, key: str) -> str:
        return self._now()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._now())

    def __len__(self) -> int:
        return len(self._now())

    def __repr__(self) -> str:
        return repr(self._now())


#: Settings only one optimizer takes: the key and that optimizer (``samkit sweep`` applies them only to it);
#: ``{"lam": "unified", "gsam_alpha": "gsam"}`` with the optimizers samkit registers.
ONLY_FOR: Mapping[str, str] = _OnlyFor()
#: (channels, side, training images, test images) of the datasets whose shape is fixed.
_SHAPES = {"fashion-mnist": (1, 28, 60_000, 10_000), "cifar10": (3, 32, 50_000, 10_000)}
#: Channels of each model's first activation (a convolution at full resolution), or units of its first layer (MLP).
_FIRST_WIDTH = {"mlp": 256, "cnn": 32, "cnn-small": 8, "cnn-small-bn": 8, "resnet20": 16}


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
    precision: str = "fp32"
    sam_start: float | None = None
    sam_on: str | None = None
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
            ("precision", PRECISIONS),
            ("device", DEVICES),
        ):
            if getattr(self, key) not in allowed:
                raise ValueError(f"unknown {key} {getattr(self, key)!r}; choose from {', '.join(allowed)}")
        for key in ("rho", "weight_decay"):
            number(getattr(self, key), _flag(key))
        m = self.momentum  # 1 or more: the momentum buffer grows without bound
        if isinstance(m, bool) or not isinstance(m, (int, float)) or not 0.0 <= m < 1.0:
            raise ValueError(f"--momentum must be a number in [0, 1), got {m!r}")
        number(self.lr, "--lr", strict=True)
        number(self.decay_frac, "--decay-frac", maximum=1.0, strict=True)
        self._check_options()
        for key in ("batch_size", "epochs", "eval_batch_size", "sharpness_batches", "sharpness_batch_size"):
            integer(getattr(self, key), _flag(key), minimum=1)
        if self.epochs > MAX_EPOCHS:
            raise ValueError(
                f"--epochs must be an integer in [1, {MAX_EPOCHS}] (more would run for ever), got {self.epochs}"
            )
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
        self._check_memory()

    def _check_options(self) -> None:
        """The settings of :data:`OPTIONS` against the optimizer's registration: each one given must be one it takes,
        each one it needs must be given, and each value in its bounds."""
        entry = registry.get(self.optimizer)
        unknown = [key for key in entry.takes if key not in OPTIONS]
        if unknown:
            raise ValueError(
                f"--optimizer {self.optimizer} takes {', '.join(unknown)}, which samkit train does not have "
                f"(it has {', '.join(OPTIONS)})"
            )
        for key, (what, bounds) in OPTIONS.items():
            value, flag = getattr(self, key), _flag(key)
            if value is None:
                if key in entry.needs:
                    raise ValueError(f"--optimizer {self.optimizer} needs {flag} ({what})")
            elif key not in entry.takes:
                users = " or ".join(registry.takers(key)) or "none of the registered optimizers"
                raise ValueError(f"{flag} is only used with --optimizer {users} (got --optimizer {self.optimizer})")
            elif "choices" in bounds:
                if value not in bounds["choices"]:
                    raise ValueError(f"{flag} must be {what}, got {value!r}")
            elif "check" in bounds:
                bounds["check"](value, flag, what)
            else:
                number(value, flag, **bounds)
        if self.sam_on == "norm":
            self._check_sam_on()

    def _check_sam_on(self) -> None:
        """``--sam-on norm`` needs a model with normalization layers (built on the meta device: no memory, no RNG)."""
        c, side = (self.channels, self.image_size) if self.dataset == "synthetic" else _SHAPES[self.dataset][:2]

        def normalized(name: str) -> bool:
            with torch.device("meta"):
                model = build_model(name, in_channels=c, image_size=side)
            try:
                sam_on_param_groups(model)
            except ValueError:
                return False
            return True

        if not normalized(self.model):
            models = " or ".join(m for m in MODELS if normalized(m))
            raise ValueError(
                f"--sam-on norm perturbs only the normalization layers, and --model {self.model} has none "
                f"(use --model {models}, or leave --sam-on out)"
            )

    def _check_memory(self) -> None:
        """Refuse a run whose data, one batch and the model's first layer cannot fit in this machine's memory.

        A lower bound, in float32: the synthetic images (and their class prototypes), the largest batch (training,
        evaluation or sharpness) with the model's first activation (``batch × width × side²``; an MLP's is small,
        but its first layer holds ``channels × side² × 256`` weights, kept with their gradient and momentum).
        Only a run that surely cannot fit is refused, before any work, naming the flags to change.
        """
        synthetic = self.dataset == "synthetic"
        if synthetic:
            c, side, n_train, n_test = self.channels, self.image_size, self.synthetic_train, self.synthetic_test
            shape = f"{c}x{side}x{side} (--channels {c}, --image-size {side})"
        else:
            c, side, n_train, n_test = _SHAPES[self.dataset]
            shape = f"{c}x{side}x{side} ({self.dataset})"
        n_train = min(n_train, self.subset or n_train)
        n_test = min(n_test, self.test_subset or n_test)
        pixels = c * side * side
        width = _FIRST_WIDTH.get(self.model, 1)
        batches = [(min(self.batch_size, n_train), f"--batch-size {self.batch_size}")]
        batches.append((min(self.eval_batch_size, n_test), f"--eval-batch-size {self.eval_batch_size}"))
        if self.sharpness_every:
            batches.append(
                (min(self.sharpness_batch_size, n_train), f"--sharpness-batch-size {self.sharpness_batch_size}")
            )
        batch, batch_flag = max(batches)
        activation = 1 if self.model == "mlp" else width * side * side  # per example, besides its input
        parts = [
            (
                4 * batch * (pixels + activation),
                f"one batch of {batch} images ({batch_flag}) of {shape}"
                + ("" if self.model == "mlp" else f" with the {self.model}'s first activation ({width} channels)"),
            ),
        ]
        if self.model == "mlp":
            parts.append(
                (
                    3 * 4 * pixels * width,
                    f"the mlp's first layer ({pixels} inputs, {shape}, x {width} units, with its gradient and momentum)",
                )
            )
        if synthetic:
            parts.append(
                (
                    4 * (n_train + n_test + 10) * pixels,
                    f"the synthetic data (--synthetic-train {self.synthetic_train} + --synthetic-test "
                    f"{self.synthetic_test} images of {shape})",
                )
            )
        need = sum(b for b, _ in parts)
        have = physical_memory()
        if have is not None and need > have:
            biggest, what = max(parts)
            raise ValueError(
                f"this run needs at least {_size(need)} of memory, more than this machine's {_size(have)}: "
                f"{what} alone needs {_size(biggest)}; choose smaller values"
            )

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


def physical_memory() -> int | None:
    """This machine's physical memory in bytes (``None`` where the system does not say)."""
    try:
        n = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None
    return n if n > 0 else None


def _size(n: float) -> str:
    """Bytes in words: ``_size(3 * 2**30) == '3 GiB'``."""
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{int(n)} bytes"
