"""Hessian eigenvalue density by stochastic Lanczos quadrature (SLQ; Ghorbani, Krishnan & Xiao 2019; PyHessian's
``density``).

For each of ``n_probes`` seeded Rademacher probes ``v`` (normalized), ``n_steps`` Lanczos steps with full
reorthogonalization give a tridiagonal ``T = S diag(theta) S^T``: the Gauss quadrature rule with nodes ``theta_i`` and
weights ``tau_i = S[0, i]^2`` (they sum to 1) satisfies ``sum_i tau_i theta_i^j = v^T H^j v`` for every
``j < 2 n_steps``. Since ``E[v^T A v] = tr(A) / n`` for a normalized Rademacher ``v``, the mean over probes of those
sums estimates the moments ``tr(H^j) / n`` of the eigenvalue distribution without bias, with a standard error from the
spread of the probes (:meth:`SpectralDensity.moment`). The density is the mean over probes of the quadrature rules,
each node smoothed by a Gaussian of width ``sigma``: it integrates to 1.

For a diagonal matrix with distinct eigenvalues the rule is exact with ``n_steps >= n`` (every probe sees every
eigenvalue with weight ``1 / n``):

>>> import torch
>>> H = torch.diag(torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64))
>>> d = spectral_density_fn(H, torch.zeros(3, dtype=torch.float64), n_probes=2, n_steps=3)
>>> d.nodes[0].round(decimals=10).tolist(), d.weights[0].round(decimals=10).tolist()
([1.0, 2.0, 4.0], [0.3333333333, 0.3333333333, 0.3333333333])
>>> mean, stderr = d.moment(1)  # tr(H) / n, exact: no spread over the probes
>>> round(mean, 12), round(stderr, 12)
(2.333333333333, 0.0)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from samkit._checks import integer, number
from samkit.sharpness.eigen import _lanczos_step, _tridiagonal, function_objective
from samkit.sharpness.hvp import LossFn, ModelObjective, Objective

__all__ = ["SpectralDensity", "spectral_density", "spectral_density_fn"]


@dataclass
class SpectralDensity:
    """The result of :func:`spectral_density` (float64 tensors).

    ``nodes``, ``weights``: ``[n_probes, n_steps]``, one Gauss quadrature rule per probe (each row of weights sums to
    1; a probe whose Krylov space closed early has zero-weight padding). ``grid`` and ``density``: the smoothed
    density, ``[n_grid]``, integrating to 1 over the grid. ``sigma``: the Gaussian width. ``n``: the dimension;
    ``n_hvp``: Hessian-vector products used.
    """

    nodes: Tensor
    weights: Tensor
    grid: Tensor
    density: Tensor
    sigma: float
    n: int
    n_hvp: int

    def moment(self, j: int) -> tuple[float, float]:
        """``(estimate, standard error)`` of ``tr(H^j) / n``, the ``j``-th moment of the eigenvalue distribution
        (exact per probe for ``j < 2 n_steps``; the error is over the probes)."""
        j = integer(j, "j", minimum=0)
        per_probe = (self.weights * self.nodes**j).sum(dim=1)
        k = per_probe.numel()
        stderr = float(per_probe.std(unbiased=True)) / math.sqrt(k) if k > 1 else math.nan
        return float(per_probe.mean()), stderr


def _slq(obj: Objective, n_probes: int, n_steps: int, seed: int) -> tuple[Tensor, Tensor]:
    n, dtype, device = obj.n, obj.dtype, obj.device
    m_max = min(n_steps, n)
    gen = torch.Generator().manual_seed(seed)
    nodes = torch.zeros(n_probes, m_max, dtype=torch.float64)
    weights = torch.zeros(n_probes, m_max, dtype=torch.float64)
    eps = torch.finfo(dtype).eps
    for p in range(n_probes):
        v = (torch.randint(0, 2, (n,), generator=gen) * 2 - 1).to(device=device, dtype=dtype)
        Q = torch.zeros(m_max, n, dtype=dtype, device=device)
        Q[0] = v / math.sqrt(n)
        alphas: list[float] = []
        betas: list[float] = []
        for m in range(m_max):
            alpha, w, beta = _lanczos_step(obj.hvp, Q, m, betas[m - 1] if m > 0 else 0.0)
            alphas.append(alpha)
            scale = max(abs(a) for a in alphas) + max(betas, default=0.0)
            if m + 1 == m_max or beta <= 100 * eps * max(scale, 1e-300):  # done, or the Krylov space closed
                break
            Q[m + 1] = w / beta
            betas.append(beta)
        theta, S = torch.linalg.eigh(_tridiagonal(alphas, betas))
        k = theta.numel()
        nodes[p, :k] = theta
        weights[p, :k] = S[0] ** 2
    return nodes, weights


def _smooth(nodes: Tensor, weights: Tensor, sigma: float | None, grid: int | Tensor) -> tuple[Tensor, Tensor, float]:
    used = nodes[weights > 0]
    lo, hi = float(used.min()), float(used.max())
    if sigma is None:  # 1% of the spectrum's width (of its scale for a single point)
        sigma = 0.01 * (hi - lo) if hi > lo else 1e-3 * max(abs(hi), 1.0)
    sigma = number(sigma, "sigma", strict=True)
    if isinstance(grid, Tensor):
        t = grid.detach().to(torch.float64).flatten()
    else:
        t = torch.linspace(lo - 6 * sigma, hi + 6 * sigma, integer(grid, "grid", minimum=2), dtype=torch.float64)
    z = (t[:, None, None] - nodes[None]) / sigma  # [grid, probes, steps]
    kernel = torch.exp(-0.5 * z * z) / (sigma * math.sqrt(2 * math.pi))
    density = (kernel * weights[None]).sum(dim=2).mean(dim=1)
    return t, density, sigma


def _density(obj: Objective, n_probes: Any, n_steps: Any, seed: int, sigma: float | None, grid: Any) -> SpectralDensity:
    n_probes = integer(n_probes, "n_probes", minimum=1)
    n_steps = integer(n_steps, "n_steps", minimum=1)
    if not isinstance(grid, Tensor):
        integer(grid, "grid", minimum=2, hint="the number of grid points, or a tensor of them")
    if sigma is not None:
        number(sigma, "sigma", strict=True)
    start = obj.n_hvp
    nodes, weights = _slq(obj, n_probes, n_steps, seed)
    t, density, sig = _smooth(nodes, weights, sigma, grid)
    return SpectralDensity(nodes, weights, t, density, sig, obj.n, obj.n_hvp - start)


def spectral_density(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Iterable[tuple[Any, Any]],
    n_probes: int = 10,
    n_steps: int = 60,
    seed: int = 0,
    *,
    sigma: float | None = None,
    grid: int | Tensor = 1000,
    train_mode: bool = False,
    dtype: torch.dtype | None = None,
    reuse_graph: bool | None = None,
) -> SpectralDensity:
    """The Hessian eigenvalue density of the dataset loss of ``model`` by stochastic Lanczos quadrature.

    ``n_probes`` Rademacher probes of ``n_steps`` Lanczos steps each (``n_probes * n_steps`` Hessian-vector
    products); ``seed`` fixes the probes (the same seed gives the same result). The density is on ``grid`` (a number
    of points spanning the nodes with 6 ``sigma`` to spare, or the points themselves), smoothed by Gaussians of width
    ``sigma`` (default 1% of the range of the nodes). Data, modes, dtype and ``reuse_graph`` as in
    :func:`~samkit.sharpness.eigen.top_eigenvalues`; the model is left untouched, so a trained model can be passed
    as it is.

    >>> import torch
    >>> model = torch.nn.Linear(3, 1, bias=False)
    >>> x = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 3.0]])
    >>> d = spectral_density(model, torch.nn.functional.mse_loss, [(x, torch.zeros(3, 1))], n_probes=4, n_steps=3)
    >>> sorted(round(float(t), 4) for t in d.nodes[0])  # H = 2 X^T X / 3 = diag(2/3, 8/3, 6)
    [0.6667, 2.6667, 6.0]
    """
    obj = ModelObjective(model, loss_fn, batches, train_mode=train_mode, dtype=dtype, reuse_graph=reuse_graph)
    return _density(obj, n_probes, n_steps, seed, sigma, grid)


def spectral_density_fn(
    f_or_hvp: Callable[[Tensor], Tensor] | Tensor,
    x: Tensor,
    n_probes: int = 10,
    n_steps: int = 60,
    seed: int = 0,
    *,
    sigma: float | None = None,
    grid: int | Tensor = 1000,
) -> SpectralDensity:
    """:func:`spectral_density` for a function, Hessian-vector product or matrix at ``x`` (see
    :func:`~samkit.sharpness.eigen.function_objective`)."""
    return _density(function_objective(f_or_hvp, x), n_probes, n_steps, seed, sigma, grid)
