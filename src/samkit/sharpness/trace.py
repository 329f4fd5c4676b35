"""Hessian trace by Hutchinson's estimator with Rademacher probes: ``tr H = E[z^T H z]``, ``z_i = +-1``.

>>> import torch
>>> H = torch.diag(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
>>> r = hessian_trace_fn(H, torch.zeros(3, dtype=torch.float64), n_samples=10)
>>> float(r.trace), float(r.stderr)  # exact for a diagonal matrix: every z^T H z = tr H
(6.0, 0.0)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from samkit._checks import integer
from samkit.sharpness.eigen import function_objective
from samkit.sharpness.hvp import LossFn, ModelObjective, Objective

__all__ = ["TraceResult", "hessian_trace", "hessian_trace_fn"]


@dataclass
class TraceResult:
    """``trace``: the mean of the ``samples`` ``z^T H z``; ``stderr``: their standard deviation / sqrt(n_samples)."""

    trace: float
    stderr: float
    n_samples: int
    n_hvp: int
    samples: Tensor


def sample_count(n_samples: Any) -> int:
    """Check the number of Monte Carlo samples (at least two, for a standard error)."""
    return integer(n_samples, "n_samples", minimum=2, hint="a standard error needs two samples")


def monte_carlo(draw: Callable[[], float], n_samples: int) -> tuple[float, float, Tensor]:
    """``n_samples`` calls of ``draw``: their mean, its standard error (std / sqrt(n_samples)), the samples.

    >>> monte_carlo(iter([1.0, 3.0]).__next__, 2)[:2]
    (2.0, 1.0)
    """
    samples = torch.tensor([draw() for _ in range(n_samples)], dtype=torch.float64)
    return float(samples.mean()), float(samples.std(unbiased=True)) / math.sqrt(n_samples), samples


def _hutchinson(obj: Objective, n_samples: int, seed: int) -> TraceResult:
    n_samples = sample_count(n_samples)
    gen = torch.Generator().manual_seed(seed)

    def draw() -> float:
        z = (torch.randint(0, 2, (obj.n,), generator=gen) * 2 - 1).to(device=obj.device, dtype=obj.dtype)
        return float(z @ obj.hvp(z))

    mean, stderr, samples = monte_carlo(draw, n_samples)
    return TraceResult(mean, stderr, n_samples, n_samples, samples)


def hessian_trace(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Iterable[tuple[Any, Any]],
    n_samples: int = 100,
    *,
    seed: int = 0,
    train_mode: bool = False,
    dtype: torch.dtype | None = None,
) -> TraceResult:
    """Hutchinson estimate of the trace of the Hessian of the dataset loss of ``model`` (``n_samples`` products).

    Data, modes and dtype as in :func:`~samkit.sharpness.eigen.top_eigenvalues`; the model is left untouched.

    >>> import torch
    >>> model = torch.nn.Linear(2, 1, bias=False)
    >>> x = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    >>> hessian_trace(model, torch.nn.functional.mse_loss, [(x, torch.zeros(2, 1))], n_samples=4).trace  # diag(1, 4)
    5.0
    """
    return _hutchinson(ModelObjective(model, loss_fn, batches, train_mode=train_mode, dtype=dtype), n_samples, seed)


def hessian_trace_fn(
    f_or_hvp: Callable[[Tensor], Tensor] | Tensor, x: Tensor, n_samples: int = 100, *, seed: int = 0
) -> TraceResult:
    """Hutchinson trace for a function, Hessian-vector product or matrix at ``x`` (see ``function_objective``)."""
    return _hutchinson(function_objective(f_or_hvp, x), n_samples, seed)
