"""What a run will do, checked before any work: the experiments, each with its preset, overrides and the config
they give (:class:`PlanItem`), and the GPU share each training unit asks for (:class:`Plan`).

Every check of a run's request happens here, once: the preset and the overrides (through the experiment's schema,
:meth:`~samkit.experiments.base.Experiment.config`), GPUs asked for units that would not use them
(:func:`check_gpu_request`), CUDA asked on a machine without it (:meth:`Plan.check_local_devices`) and unit grids
beyond any machine's memory (:func:`check_sizes`, once the units are known).

Example:
    >>> from samkit.experiments import get
    >>> item = PlanItem.of(get("E4"), "tiny", ["seed=1"])
    >>> item.exp.name, item.preset, item.overrides, item.config["seed"]
    ('E4', 'tiny', ('seed=1',), 1)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from samkit.experiments.base import ConfigError, Experiment, Unit

__all__ = ["PlanItem", "Plan", "make_plan", "check_sizes", "check_gpu_request", "MAX_LIST", "MAX_GRID"]


@dataclass(frozen=True)
class PlanItem:
    """One experiment of a run: the experiment, its preset, the overrides and the config they give."""

    exp: Experiment
    preset: str
    overrides: tuple[str, ...]
    config: dict[str, Any] = field(hash=False, compare=False)

    @classmethod
    def of(cls, exp: Experiment, preset: str = "quick", overrides: Iterable[str] = ()) -> PlanItem:
        """``exp`` with the config ``preset`` and ``overrides`` give (a :class:`ConfigError` naming the experiment,
        the key, the value and what is allowed when they give none)."""
        overrides = tuple(overrides)
        return cls(exp, preset, overrides, exp.config(preset, overrides))


def make_plan(
    experiments: Sequence[Experiment], preset: str, overrides: Sequence[str] = (), *, device: str | None = None
) -> list[PlanItem]:
    """The plan of ``experiments`` under one preset and one set of overrides; ``device`` (``cpu``, ``cuda``, ...)
    is set for the experiments that have a ``device`` key. Every override of every experiment is checked before
    the first unit of any of them runs."""
    items = []
    for exp in experiments:
        extra = [f"device={device}"] if device and "device" in exp.schema else []
        items.append(PlanItem.of(exp, preset, [*overrides, *extra]))
    return items


def check_gpu_request(items: Sequence[PlanItem], gpus: float) -> None:
    """Refuse GPUs asked for training units that would train on the CPU (they would hold GPUs and not use them).

    >>> from samkit.experiments import get
    >>> e7 = get("E7")
    >>> check_gpu_request([PlanItem.of(e7, "tiny", ["device=cuda"])], 0.25)  # fine
    >>> check_gpu_request([PlanItem.of(e7, "tiny")], 0.25)
    Traceback (most recent call last):
    ...
    samkit.experiments.base.ConfigError: --gpus-per-unit 0.25 would reserve GPUs for E7's training units, but they \
train on device=cpu: add --device cuda (or leave out --gpus-per-unit)
    """
    for item in items:
        if gpus and item.exp.device_units and item.config.get("device") == "cpu":
            raise ConfigError(
                f"--gpus-per-unit {gpus:g} would reserve GPUs for {item.exp.name}'s training units, but they train on "
                "device=cpu: add --device cuda (or leave out --gpus-per-unit)"
            )


@dataclass(frozen=True)
class Plan:
    """The experiments of a run and the GPU share (``num_gpus``, fractions allowed) each unit of an experiment
    that trains on a torch device asks of executors that schedule GPUs; checked when made."""

    items: tuple[PlanItem, ...]
    gpus_per_unit: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "items", tuple(self.items))
        if not all(isinstance(i, PlanItem) for i in self.items):
            raise TypeError("a Plan holds PlanItem objects (PlanItem.of(experiment, preset, overrides))")
        check_gpu_request(self.items, self.gpus_per_unit)

    def check_local_devices(self) -> None:
        """Refuse ``device=cuda`` before any unit starts when this machine has no CUDA device (for executors that
        run units here; a Ray cluster's workers may have GPUs this machine has not)."""
        wanted = [i.exp.name for i in self.items if str(i.config.get("device", "cpu")).startswith("cuda")]
        if wanted:
            import torch

            if not torch.cuda.is_available():
                raise ConfigError(
                    f"{', '.join(wanted)}: device=cuda but torch sees no CUDA device on this machine; use --device "
                    "cpu, or --executor ray with a cluster that has GPUs"
                )


#: The most values one list of a unit's parameters may hold, and the most (η, ρ, …) combinations the two longest
#: lists of a unit may span: 66× the largest of any built-in preset (150 values, a 150 × 101 grid). Beyond them the
#: memory a unit needs (every recorded step of every combination, and the tables built from them) is out of reach
#: of any one machine: refused before any work instead of failing after minutes with tens of gigabytes allocated.
MAX_LIST = 10_000
MAX_GRID = 1_000_000


def check_sizes(name: str, units: Sequence[Unit]) -> None:
    """Refuse units whose grids are obviously out of memory's reach (:data:`MAX_LIST`, :data:`MAX_GRID`).

    >>> check_sizes("E4", [Unit("u", {"rhos": list(range(20_000))})])
    Traceback (most recent call last):
    ...
    samkit.experiments.base.ConfigError: E4: unit 'u' would take 20000 values of rhos; at most 10000 per list (and 1000000 grid points per unit) are accepted: memory out of reach, use a smaller grid
    """
    for u in units:
        lengths = sorted(((len(v), k) for k, v in u.params.items() if isinstance(v, (list, tuple))), reverse=True)
        if not lengths:
            continue
        grid = lengths[0][0] * (lengths[1][0] if len(lengths) > 1 else 1)
        if lengths[0][0] > MAX_LIST or grid > MAX_GRID:
            what = f"{lengths[0][0]} values of {lengths[0][1]}"
            if grid > MAX_GRID:
                what = f"a grid of {lengths[0][0]} × {lengths[1][0]} ({lengths[0][1]} × {lengths[1][1]})"
            raise ConfigError(
                f"{name}: unit {u.key!r} would take {what}; at most {MAX_LIST} per list (and {MAX_GRID} grid points "
                "per unit) are accepted: memory out of reach, use a smaller grid"
            )
