"""Helpers shared by the experiments: tensors to lists, grids, and the config keys several of them declare."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from samkit.experiments.base import Param

__all__ = ["logspace", "linspace", "tolist", "theory_float", "SEED", "BLOWUP"]

#: The ``seed`` key of an experiment whose runs draw no random numbers (recorded with the results).
SEED = Param(int, "random seed, recorded with the results (the runs draw no random numbers)", min=0)
#: The ``blowup`` key: the divergence test of :func:`samkit.dynamics.simulate`.
BLOWUP = Param(float, "a run has diverged once its iterate's norm exceeds this", min=0, strict=True)


def logspace(lo: float, hi: float, n: int) -> list[float]:
    """``n`` log-spaced values from ``lo`` to ``hi`` (inclusive), rounded to 6 significant digits.

    >>> logspace(0.01, 1.0, 3)
    [0.01, 0.1, 1.0]
    """
    if n == 1:
        return [float(lo)]
    return [float(f"{v:.6g}") for v in np.logspace(math.log10(lo), math.log10(hi), n)]


def linspace(lo: float, hi: float, n: int) -> list[float]:
    """``n`` evenly spaced values from ``lo`` to ``hi`` (inclusive), rounded to 6 significant digits.

    >>> linspace(0.0, 1.0, 3)
    [0.0, 0.5, 1.0]
    """
    return [float(f"{v:.6g}") for v in np.linspace(lo, hi, n)]


def tolist(t: Any) -> Any:
    """A tensor or array as (nested) Python lists; other values unchanged."""
    if isinstance(t, torch.Tensor):
        return t.detach().cpu().tolist()
    if isinstance(t, np.ndarray):
        return t.tolist()
    return t


def theory_float(t: Any) -> float:
    """A 0-d theory tensor as a float."""
    return float(torch.as_tensor(t))
