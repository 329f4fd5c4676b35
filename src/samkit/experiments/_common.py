"""Helpers shared by the experiments: tensors to lists, grids, and the config keys several of them declare."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from samkit.experiments.base import Param, Scope

__all__ = [
    "logspace",
    "linspace",
    "tolist",
    "theory_float",
    "SEED",
    "BLOWUP",
    "SENSING",
    "grid_keys",
    "mesh",
    "seed_text",
    "tanh_mlp_scope",
]

#: The ``seed`` key of an experiment whose runs draw no random numbers (recorded with the results).
SEED = Param(int, "random seed, recorded with the results (the runs draw no random numbers)", min=0)
#: The ``blowup`` key: the divergence test of :func:`samkit.dynamics.simulate`.
BLOWUP = Param(float, "a run has diverged once its iterate's norm exceeds this", min=0, strict=True)
#: The keys of the matrix-sensing problem (E1, E2).
SENSING = {
    "seed": Param(int, "seed of the sensing problem (ground truth X* and measurements A_i)", min=0),
    "d": Param(int, "size of U ∈ ℝ^{d×d}", min=1),
    "r": Param(int, "rank of the ground truth X* = U*U*ᵀ", min=1, max="d"),
}


def grid_keys(name: str, what: str, spacing: str) -> dict[str, Param]:
    """The three keys of a grid of positive values: ``{name}_min`` < ``{name}_max`` and ``n_{name}`` ≥ 1 points.

    >>> sorted(grid_keys("rho", "ρ of the runs", "log-spaced"))
    ['n_rho', 'rho_max', 'rho_min']
    """
    return {
        f"{name}_min": Param(float, f"smallest {what}", min=0, strict=True, below=f"{name}_max"),
        f"{name}_max": Param(float, f"largest {what}", min=0, strict=True),
        f"n_{name}": Param(int, f"number of points from {name}_min to {name}_max ({spacing})", min=1),
    }


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


def mesh(a: list[float], b: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Every pair ``(a_i, b_j)``, ``a``-major, as two flat float64 tensors.

    >>> [t.tolist() for t in mesh([1.0, 2.0], [3.0, 4.0])]
    [[1.0, 1.0, 2.0, 2.0], [3.0, 4.0, 3.0, 4.0]]
    """
    A, B = torch.meshgrid(torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64), indexing="ij")
    return A.reshape(-1), B.reshape(-1)


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


def seed_text(seeds: list[int]) -> str:
    """Seeds in words, runs of consecutive seeds as ranges.

    >>> seed_text([0, 1, 2, 3, 7, 9, 10])
    '0–3, 7, 9–10'
    """
    parts: list[str] = []
    for s in sorted(seeds):
        if parts and parts[-1].split("–")[-1] == str(s - 1):
            parts[-1] = parts[-1].split("–")[0] + f"–{s}"
        else:
            parts.append(str(s))
    return ", ".join(parts)


def tanh_mlp_scope(config: Mapping[str, Any], claims: list[str]) -> Scope:
    """E8's and E9's deep net (a tanh MLP trained full-batch on the first ``n_train`` images) as a report scope."""
    hidden = "-".join(str(h) for h in config["hidden"])
    return Scope(
        "tanh MLP",
        f"MLP 784-{hidden}-10 (tanh, no normalization), full batch on the first {config['n_train']} "
        f"{config['dataset']} training images, square loss, seeds {seed_text(config['seeds'])}",
        claims,
    )
