"""Worst-case and average-case weight-perturbation sharpness (Foret et al. 2021; Andriushchenko & Flammarion 2022).

* Worst-case rho-sharpness ``max_{||delta|| <= rho} L(w + delta) - L(w)`` (one global L2 ball over all trainable
  parameters) by projected normalized-gradient ascent with restarts. Restart 0 starts at ``delta = 0``, so its first
  step is SAM's perturbation ``rho g / ||g||`` and ``steps=1, restarts=1`` gives SAM's loss increase; further restarts
  start at a random point of the sphere. The result is the largest loss seen at any evaluated point of the ball
  (``delta = 0`` included), so it is a certified lower bound of the true maximum and never negative.
* Average-case sharpness ``E L(w + delta) - L(w)``, ``delta ~ N(0, sigma^2 I)``, by Monte Carlo with a standard error.

For a quadratic ``L = w^T A w / 2`` at its minimum the worst case is ``rho^2 lambda_max / 2`` and the average case is
``sigma^2 tr(A) / 2``:

>>> import torch
>>> A = torch.diag(torch.tensor([4.0, 1.0], dtype=torch.float64))
>>> f = lambda w: 0.5 * w @ A @ w
>>> x0 = torch.zeros(2, dtype=torch.float64)
>>> round(worst_case_sharpness_fn(f, x0, rho=0.1, steps=20, restarts=2).sharpness, 6)  # 0.1^2 * 4 / 2
0.02
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from samkit._checks import integer, number
from samkit.sharpness.hvp import FunctionObjective, LossFn, ModelObjective, Objective
from samkit.sharpness.trace import monte_carlo, sample_count

__all__ = [
    "WorstCaseResult",
    "AverageSharpnessResult",
    "worst_case_sharpness",
    "worst_case_sharpness_fn",
    "average_sharpness",
    "average_sharpness_fn",
]


@dataclass
class WorstCaseResult:
    """``sharpness = perturbed_loss - loss``; ``delta``: the flat maximizing perturbation (``||delta|| <= rho``);
    ``restart_sharpness``: the best value of each restart; ``n_grad``: loss-and-gradient passes over the data."""

    sharpness: float
    loss: float
    perturbed_loss: float
    delta: Tensor
    restart_sharpness: tuple[float, ...]
    n_grad: int


@dataclass
class AverageSharpnessResult:
    """``sharpness``: mean of ``samples`` (each ``L(w + delta) - L(w)``); ``stderr``: std / sqrt(n_samples)."""

    sharpness: float
    stderr: float
    loss: float
    n_samples: int
    samples: Tensor


def _worst_case(
    obj: Objective, rho: float, steps: int, restarts: int, step_size: float | None, seed: int
) -> WorstCaseResult:
    rho = number(rho, "rho", strict=True)
    steps = integer(steps, "steps", minimum=1)
    restarts = integer(restarts, "restarts", minimum=1)
    eta = rho if step_size is None else number(step_size, "step_size", strict=True)
    gen = torch.Generator().manual_seed(seed)

    def rand_dir() -> Tensor:
        d = torch.randn(obj.n, generator=gen, dtype=torch.float64).to(obj.device, obj.dtype)
        return d / d.norm()

    base = float(obj.loss())
    w0 = obj.w0
    best_loss, best_delta = base, torch.zeros_like(w0)
    per_restart: list[float] = []
    n_grad = 0
    for r in range(restarts):
        delta = torch.zeros_like(w0) if r == 0 else rho * rand_dir()
        run_best = base if r == 0 else -math.inf
        for _ in range(steps):
            value, g = obj.loss_and_grad(w0 + delta)
            n_grad += 1
            loss = float(value)
            if loss > run_best:
                run_best = loss
            if loss > best_loss:
                best_loss, best_delta = loss, delta.clone()
            gn = g.norm()
            direction = g / gn if gn > 0 and torch.isfinite(gn) else rand_dir()  # zero gradient: random direction
            delta = delta + eta * direction
            dn = delta.norm()
            if dn > rho:
                delta = delta * (rho / dn)
        loss = float(obj.loss(w0 + delta))
        if loss > run_best:
            run_best = loss
        if loss > best_loss:
            best_loss, best_delta = loss, delta.clone()
        per_restart.append(run_best - base)
    return WorstCaseResult(best_loss - base, base, best_loss, best_delta, tuple(per_restart), n_grad)


def _average(obj: Objective, sigma: float, n_samples: int, seed: int) -> AverageSharpnessResult:
    sigma = number(sigma, "sigma", strict=True)
    n_samples = sample_count(n_samples)
    gen = torch.Generator().manual_seed(seed)
    base = float(obj.loss())

    def draw() -> float:
        delta = sigma * torch.randn(obj.n, generator=gen, dtype=torch.float64).to(obj.device, obj.dtype)
        return float(obj.loss(obj.w0 + delta)) - base

    mean, stderr, samples = monte_carlo(draw, n_samples)
    return AverageSharpnessResult(mean, stderr, base, n_samples, samples)


def worst_case_sharpness(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Iterable[tuple[Any, Any]],
    rho: float,
    *,
    steps: int = 10,
    restarts: int = 1,
    step_size: float | None = None,
    seed: int = 0,
    train_mode: bool = False,
    dtype: torch.dtype | None = None,
) -> WorstCaseResult:
    """Worst-case ``rho``-sharpness of the dataset loss of ``model`` by projected gradient ascent.

    Each of the ``restarts`` runs ``steps`` normalized-gradient steps of size ``step_size`` (default ``rho``)
    followed by projection onto the ball; every step is one loss-and-gradient pass over all ``batches``. Data, modes
    and dtype as in :func:`~samkit.sharpness.eigen.top_eigenvalues`; the model is left untouched.

    >>> import torch
    >>> model = torch.nn.Linear(1, 1, bias=False)
    >>> torch.nn.init.zeros_(model.weight)  # doctest: +ELLIPSIS
    Parameter...
    >>> data = [(torch.ones(4, 1), torch.zeros(4, 1))]  # L(w) = w^2: worst case over |delta| <= 0.5 is 0.25
    >>> round(worst_case_sharpness(model, torch.nn.functional.mse_loss, data, rho=0.5, steps=2).sharpness, 6)
    0.25
    """
    obj = ModelObjective(model, loss_fn, batches, train_mode=train_mode, dtype=dtype)
    return _worst_case(obj, rho, steps, restarts, step_size, seed)


def worst_case_sharpness_fn(
    f: Callable[[Tensor], Tensor],
    x: Tensor,
    rho: float,
    *,
    steps: int = 10,
    restarts: int = 1,
    step_size: float | None = None,
    seed: int = 0,
) -> WorstCaseResult:
    """Worst-case ``rho``-sharpness of a scalar function ``f`` of a flat tensor at ``x`` (see the module example)."""
    return _worst_case(FunctionObjective(f, x), rho, steps, restarts, step_size, seed)


def average_sharpness(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Iterable[tuple[Any, Any]],
    sigma: float,
    *,
    n_samples: int = 10,
    seed: int = 0,
    train_mode: bool = False,
    dtype: torch.dtype | None = None,
) -> AverageSharpnessResult:
    """Average-case sharpness ``E L(w + delta) - L(w)``, ``delta ~ N(0, sigma^2 I)`` on all trainable parameters.

    ``n_samples`` loss passes over all ``batches`` plus one at ``w``. Data, modes and dtype as in
    :func:`~samkit.sharpness.eigen.top_eigenvalues`; the model is left untouched.

    >>> import torch
    >>> model = torch.nn.Linear(1, 1, bias=False)
    >>> r = average_sharpness(model, torch.nn.functional.mse_loss, [(torch.ones(2, 1), torch.zeros(2, 1))], 0.1)
    >>> r.n_samples, r.stderr > 0
    (10, True)
    """
    obj = ModelObjective(model, loss_fn, batches, train_mode=train_mode, dtype=dtype)
    return _average(obj, sigma, n_samples, seed)


def average_sharpness_fn(
    f: Callable[[Tensor], Tensor], x: Tensor, sigma: float, *, n_samples: int = 10, seed: int = 0
) -> AverageSharpnessResult:
    """Average-case sharpness of a scalar function ``f`` of a flat tensor at ``x``.

    >>> import torch
    >>> r = average_sharpness_fn(lambda w: 0.5 * (w ** 2).sum(), torch.zeros(100, dtype=torch.float64), 0.1, n_samples=50)
    >>> abs(r.sharpness - 0.5) < 3 * r.stderr  # sigma^2 tr(I_100) / 2 = 0.5
    True
    """
    return _average(FunctionObjective(f, x), sigma, n_samples, seed)
