"""The paper's experiments, one module each, behind a small registry.

Built-in experiments are listed in :data:`BUILTIN` (name -> module) and imported lazily; each module
registers its class with the :func:`register` decorator. A new experiment either adds a line to :data:`BUILTIN`
or calls :func:`register` from its own module and is then picked up by ``samkit list`` / ``samkit reproduce``
like the others.

Example:
    >>> from samkit.experiments import names
    >>> names()[:3]
    ['E1', 'E2', 'E3']
"""

from __future__ import annotations

import importlib

from samkit.experiments.base import (
    PRESETS,
    Claim,
    ConfigError,
    Experiment,
    Figure,
    Param,
    Table,
    Unit,
    apply_overrides,
    describe,
    fmt,
    stable_hash,
)
from samkit.experiments.results import sort_key as _sort_key
from samkit.experiments.runner import finalize, run_experiment

__all__ = [
    "BUILTIN",
    "PRESETS",
    "Claim",
    "ConfigError",
    "Experiment",
    "Figure",
    "Param",
    "Table",
    "Unit",
    "apply_overrides",
    "describe",
    "fmt",
    "stable_hash",
    "register",
    "get",
    "names",
    "finalize",
    "run_experiment",
]

#: Built-in experiments: name -> module that registers it (imported on first use).
BUILTIN: dict[str, str] = {
    "E1": "samkit.experiments.e1_sensing_far",
    "E2": "samkit.experiments.e2_sensing_near",
    "E3": "samkit.experiments.e3_theorem1",
    "E4": "samkit.experiments.e4_scalar",
    "E5": "samkit.experiments.e5_single_neuron",
    "E6": "samkit.experiments.e6_pl",
    "E7": "samkit.experiments.e7",
    "E8": "samkit.experiments.e8",
    "E9": "samkit.experiments.e9",
}

_REGISTRY: dict[str, type[Experiment]] = {}


def register(cls: type[Experiment]) -> type[Experiment]:
    """Class decorator: make an :class:`Experiment` subclass available by its ``name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    missing = [p for p in PRESETS if p not in cls.presets]
    if missing:
        raise ValueError(f"{cls.name} lacks presets {missing}")
    keys = {p: set(cfg) for p, cfg in cls.presets.items()}
    ref = keys[PRESETS[0]]
    for p, k in keys.items():
        if k != ref:
            raise ValueError(f"{cls.name}: preset {p!r} keys differ from {PRESETS[0]!r}: {sorted(k ^ ref)}")
    cls().check_presets()
    _REGISTRY[cls.name] = cls
    return cls


def names() -> list[str]:
    """Names of all known experiments (built-in and registered), in order E1, E2, ..."""
    return sorted(set(BUILTIN) | set(_REGISTRY), key=_sort_key)


def get(name: str) -> Experiment:
    """An instance of the experiment called ``name`` (case-insensitive); :class:`ConfigError` if unknown."""
    key = {n.lower(): n for n in names()}.get(name.lower())
    if key is None:
        raise ConfigError(f"unknown experiment {name!r} (known: {', '.join(names())})")
    if key not in _REGISTRY:
        importlib.import_module(BUILTIN[key])
        if key not in _REGISTRY:
            raise RuntimeError(f"module {BUILTIN[key]} did not register experiment {key}")
    return _REGISTRY[key]()
