"""Helpers shared by the experiments: tensors to lists, verdict formatting, log-spaced grids."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["logspace", "linspace", "tolist", "theory_float", "rel_err"]


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


def rel_err(measured: Sequence[float] | np.ndarray, predicted: Sequence[float] | np.ndarray) -> np.ndarray:
    """Elementwise ``|m − p| / |p|``."""
    m, p = np.asarray(measured, float), np.asarray(predicted, float)
    return np.abs(m - p) / np.abs(p)
