"""Hessian trace and diagonal from Hessian-vector products: Hutchinson's estimator and Hutch++.

* **Hutchinson** (``method="hutchinson"``, the default; PyHessian's method): ``tr H = E[z^T H z]`` with Rademacher
  probes ``z_i = +-1``; ``n_samples`` probes cost ``n_samples`` Hessian-vector products (HVPs). Its variance per
  probe is ``2 sum_{i != j} H_ij^2``: large when a few eigenvalues carry much of the Frobenius norm.
* **Hutch++** (``method="hutch++"``; Meyer, Musco, Musco and Woodruff, "Hutch++: optimal stochastic trace
  estimation", SOSA 2021, Algorithm 1) spends the same budget of ``m = n_samples`` HVPs in three parts: ``k = m // 3``
  products ``H S`` with a Rademacher sketch ``S`` (``n x k``), ``Q = orth(H S)`` (thin QR); ``k`` products for the
  exact ``tr(Q^T H Q)``; and Hutchinson with the remaining ``m - 2k`` probes on the deflated ``P H P``,
  ``P = I - Q Q^T``. Given ``Q`` the estimate is unbiased (``tr H = tr(Q^T H Q) + tr(P H P)``) and its error is that
  of the residual alone, so it is exact when ``H`` has rank at most ``k`` and far more accurate than Hutchinson when
  the top ``k`` eigenvalues hold most of ``||H||_F^2`` (the error falls as ``1/m`` instead of ``1/sqrt(m)``). On a
  flat spectrum (a small top-``k`` share) it spends two thirds of its budget for little, and Hutchinson is better:
  2.7x (predicted) to 3.9x (measured) more products at 5% accuracy on an MLP at initialization, and a 6x larger
  variance at equal products on a near-identity ``H`` (eigenvalues ``1 +- 0.3``: Rademacher probes are nearly exact
  on a near-diagonal ``H``, ``P H P`` is not). On a trained CNN it used 0.15x Hutchinson's products (``docs/trace.md``).

Both use a fixed budget: ``n_samples`` is the number of HVPs either way (the products are computed one at a time: a
batched double backward through ``torch.autograd.grad(..., is_grads_batched=True)`` measured 1.1-2.3x *slower* per
vector than the loop on the 25 578-parameter CNN of ``benchmarks/trace.py``). The result reports ``stderr``, the
standard error of the mean of ``samples`` (for Hutch++, given the sketch: the residual probes' spread), as the
estimate of the error; pick the budget from it. ``benchmarks/trace.py`` and ``docs/trace.md`` have the measured HVPs
at 5% accuracy.

* **Diagonal** (:func:`hessian_diagonal`): Hutchinson's (Bekas, Kokiopoulou and Saad 2007) ``diag H = E[z * H z]``,
  exact for a diagonal ``H`` (``z_i^2 = 1``), with a per-entry standard error.

Probes come from a CPU ``torch.Generator`` seeded with ``seed`` and are moved to the parameters' device and dtype, so
the same seed gives the same probes on any device.

>>> import torch
>>> H = torch.diag(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
>>> r = hessian_trace_fn(H, torch.zeros(3, dtype=torch.float64), n_samples=10)
>>> float(r.trace), float(r.stderr)  # exact for a diagonal matrix: every z^T H z = tr H
(6.0, 0.0)
>>> u = torch.ones(3, dtype=torch.float64)
>>> r = hessian_trace_fn(torch.outer(u, u), u, n_samples=6, method="hutch++")  # rank 1 <= 6 // 3: exact
>>> round(r.trace, 10), r.n_hvp, r.sketch_rank
(3.0, 6, 2)
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

__all__ = [
    "TRACE_METHODS",
    "DiagonalResult",
    "TraceResult",
    "hessian_diagonal",
    "hessian_diagonal_fn",
    "hessian_trace",
    "hessian_trace_fn",
]

TRACE_METHODS = ("hutchinson", "hutch++")


@dataclass
class TraceResult:
    """The trace estimate and its standard error.

    ``trace``: the mean of ``samples``; ``stderr``: their standard deviation / sqrt(n_samples); ``n_hvp``: the
    Hessian-vector products used. Hutchinson: ``samples`` are the ``z^T H z``, ``n_samples == n_hvp``. Hutch++:
    ``samples`` are ``sketch_trace + z^T P H P z`` over the ``n_samples = n_hvp - 2 * sketch_rank`` residual probes,
    ``sketch_trace = tr(Q^T H Q)`` the exact trace on the sketch's ``sketch_rank`` directions (0 for Hutchinson).
    """

    trace: float
    stderr: float
    n_samples: int
    n_hvp: int
    samples: Tensor
    method: str = "hutchinson"
    sketch_rank: int = 0
    sketch_trace: float = 0.0


@dataclass
class DiagonalResult:
    """The Hessian diagonal estimate: ``diagonal`` and its per-entry ``stderr`` (std / sqrt(n_samples)).

    For a model, lists of tensors shaped like the trainable parameters (their names in ``names``, the order of
    ``model.named_parameters()``); for a function, tensors shaped like ``x`` (``names`` is empty).
    """

    diagonal: list[Tensor] | Tensor
    stderr: list[Tensor] | Tensor
    n_samples: int
    n_hvp: int
    names: list[str]


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


def _rademacher(obj: Objective, gen: torch.Generator) -> Tensor:
    return (torch.randint(0, 2, (obj.n,), generator=gen) * 2 - 1).to(device=obj.device, dtype=obj.dtype)


def _hutchinson(obj: Objective, n_samples: int, seed: int) -> TraceResult:
    n_samples = sample_count(n_samples)
    gen = torch.Generator().manual_seed(seed)

    def draw() -> float:
        z = _rademacher(obj, gen)
        return float(z @ obj.hvp(z))

    mean, stderr, samples = monte_carlo(draw, n_samples)
    return TraceResult(mean, stderr, n_samples, n_samples, samples)


def _hutchpp(obj: Objective, n_samples: Any, seed: int) -> TraceResult:
    """Hutch++ with a budget of ``n_samples`` products (Meyer et al. 2021, Algorithm 1; see the module docstring)."""
    budget = integer(
        n_samples,
        "n_samples",
        minimum=4,
        hint="method='hutch++' splits its budget of Hessian-vector products into a sketch of k = n_samples // 3 "
        "vectors, k products for the trace on the sketch and at least two residual probes for a standard error",
    )
    start = obj.n_hvp
    k = min(budget // 3, obj.n)
    gen = torch.Generator().manual_seed(seed)
    sketch = torch.stack([obj.hvp(_rademacher(obj, gen)) for _ in range(k)], dim=1)  # H S, n x k
    Q, _ = torch.linalg.qr(sketch, mode="reduced")
    sketch_trace = sum(float(Q[:, j] @ obj.hvp(Q[:, j].contiguous())) for j in range(k))

    def draw() -> float:
        z = _rademacher(obj, gen)
        z = z - Q @ (Q.T @ z)
        return sketch_trace + float(z @ obj.hvp(z))

    n_residual = budget - 2 * k
    mean, stderr, samples = monte_carlo(draw, n_residual)
    return TraceResult(mean, stderr, n_residual, obj.n_hvp - start, samples, "hutch++", k, sketch_trace)


def _trace(obj: Objective, n_samples: Any, seed: int, method: Any) -> TraceResult:
    if method not in TRACE_METHODS:
        raise ValueError(f"unknown method {method!r}; allowed: {', '.join(repr(m) for m in TRACE_METHODS)}")
    return _hutchinson(obj, n_samples, seed) if method == "hutchinson" else _hutchpp(obj, n_samples, seed)


def hessian_trace(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Iterable[tuple[Any, Any]],
    n_samples: int = 100,
    *,
    seed: int = 0,
    train_mode: bool = False,
    dtype: torch.dtype | None = None,
    method: str = "hutchinson",
) -> TraceResult:
    """Estimate of the trace of the Hessian of the dataset loss of ``model`` from ``n_samples`` products.

    ``method``: ``"hutchinson"`` (default) or ``"hutch++"`` (at least 4 products; better when a few top eigenvalues
    carry much of the Hessian, see the module docstring). Either way ``n_samples`` Hessian-vector products are used
    (``n_hvp``) and ``stderr`` estimates the error. Probes are seeded by ``seed``. Data, modes and dtype as in
    :func:`~samkit.sharpness.eigen.top_eigenvalues`; the model is left untouched.

    >>> import torch
    >>> model = torch.nn.Linear(2, 1, bias=False)
    >>> x = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    >>> hessian_trace(model, torch.nn.functional.mse_loss, [(x, torch.zeros(2, 1))], n_samples=4).trace  # diag(1, 4)
    5.0
    >>> r = hessian_trace(model, torch.nn.functional.mse_loss, [(x, torch.zeros(2, 1))], n_samples=6, method="hutch++")
    >>> round(r.trace, 5), r.n_hvp  # the 2 x 2 Hessian is covered by a sketch of 6 // 3 = 2 vectors: exact
    (5.0, 6)
    """
    obj = ModelObjective(model, loss_fn, batches, train_mode=train_mode, dtype=dtype)
    return _trace(obj, n_samples, seed, method)


def hessian_trace_fn(
    f_or_hvp: Callable[[Tensor], Tensor] | Tensor,
    x: Tensor,
    n_samples: int = 100,
    *,
    seed: int = 0,
    method: str = "hutchinson",
) -> TraceResult:
    """Trace for a function, Hessian-vector product or matrix at ``x`` (see ``function_objective``), in ``x``'s dtype.

    ``n_samples``, ``seed`` and ``method`` as in :func:`hessian_trace`.

    >>> import torch
    >>> A = torch.diag(torch.tensor([10.0, 1.0, 0.1, 0.01], dtype=torch.float64))
    >>> r = hessian_trace_fn(lambda x: 0.5 * x @ A @ x, torch.zeros(4, dtype=torch.float64), 12, method="hutch++")
    >>> round(r.trace, 10), r.n_hvp, r.sketch_rank, r.stderr < 1e-10  # rank 4 <= 12 // 3
    (11.11, 12, 4, True)
    """
    return _trace(function_objective(f_or_hvp, x), n_samples, seed, method)


def _diagonal(obj: Objective, n_samples: Any, seed: int) -> tuple[Tensor, Tensor, int]:
    """Mean and standard error of ``z * H z`` over ``n_samples`` Rademacher probes (Welford's running moments)."""
    n_samples = sample_count(n_samples)
    gen = torch.Generator().manual_seed(seed)
    mean = torch.zeros(obj.n, device=obj.device, dtype=obj.dtype)
    m2 = torch.zeros_like(mean)
    for i in range(n_samples):
        z = _rademacher(obj, gen)
        d = z * obj.hvp(z)
        delta = d - mean
        mean.add_(delta, alpha=1.0 / (i + 1))
        m2.add_(delta * (d - mean))
    return mean, (m2 / ((n_samples - 1) * n_samples)).sqrt_(), n_samples


def hessian_diagonal(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Iterable[tuple[Any, Any]],
    n_samples: int = 100,
    *,
    seed: int = 0,
    train_mode: bool = False,
    dtype: torch.dtype | None = None,
) -> DiagonalResult:
    """Hutchinson estimate ``mean(z * H z)`` of the diagonal of the dataset-loss Hessian of ``model``.

    ``n_samples`` Rademacher probes (``n_samples`` Hessian-vector products), seeded by ``seed``; exact when the
    Hessian is diagonal. Returns one tensor per trainable parameter (its shape, the objective's dtype and device)
    with per-entry standard errors. Data, modes and dtype as in :func:`hessian_trace`; the model is left untouched.

    >>> import torch
    >>> model = torch.nn.Linear(2, 1, bias=False)
    >>> x = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    >>> r = hessian_diagonal(model, torch.nn.functional.mse_loss, [(x, torch.zeros(2, 1))], n_samples=3)
    >>> r.names, r.diagonal  # the Hessian is diag(1, 4)
    (['weight'], [tensor([[1., 4.]])])
    """
    obj = ModelObjective(model, loss_fn, batches, train_mode=train_mode, dtype=dtype)
    mean, stderr, n = _diagonal(obj, n_samples, seed)

    def split(flat: Tensor) -> list[Tensor]:
        return [t.reshape(s) for t, s in zip(torch.split(flat, obj.numels), obj.shapes)]

    return DiagonalResult(split(mean), split(stderr), n, n, list(obj.names))


def hessian_diagonal_fn(
    f_or_hvp: Callable[[Tensor], Tensor] | Tensor, x: Tensor, n_samples: int = 100, *, seed: int = 0
) -> DiagonalResult:
    """Hutchinson diagonal for a function, Hessian-vector product or matrix at ``x``; tensors shaped like ``x``.

    >>> import torch
    >>> H = torch.tensor([[2.0, 1.0], [1.0, 3.0]], dtype=torch.float64)
    >>> r = hessian_diagonal_fn(H, torch.zeros(2, dtype=torch.float64), n_samples=4)
    >>> r.diagonal, r.stderr  # unbiased: each probe adds H_12 z_1 z_2 = +-1 (here twice each)
    (tensor([2., 3.], dtype=torch.float64), tensor([0.5774, 0.5774], dtype=torch.float64))
    """
    mean, stderr, n = _diagonal(function_objective(f_or_hvp, x), n_samples, seed)
    return DiagonalResult(mean.reshape(x.shape), stderr.reshape(x.shape), n, n, [])
