"""Where a method starts to diverge: bisection in log ρ, every configuration of a batch at once.

>>> import torch
>>> from samkit.dynamics import Quadratic
>>> b = divergence_boundary(Quadratic([10.0, 1.0]), "usam", eta=torch.tensor([0.1]), x0=torch.ones(1, 2),
...                         lo=1e-3, hi=10.0, rtol=1e-3, steps=2000, blowup=1e12)
>>> b.bracketed.tolist(), round(b.rho_star.item(), 2)  # USAM's threshold 2/(β + ρβ²) = η at ρ = 0.1
([True], 0.1)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from samkit.dynamics.problems import Problem, ScalarFactorization
from samkit.dynamics.simulate import simulate

__all__ = ["Boundary", "divergence_boundary", "factorization_boundary", "factorization_start"]


@dataclass
class Boundary:
    """The result of :func:`divergence_boundary`, per configuration (``[B]`` tensors): the last bounded ``rho_lo`` and
    the first diverging ``rho_hi`` of the bracket, whether the initial bracket held a boundary (``bracketed``: bounded
    at ``lo`` and diverged at ``hi``), whether the run at ``hi`` diverged (``diverged_at_hi``), and the number of
    bisection rounds (one batched simulation each)."""

    rho_lo: Tensor
    rho_hi: Tensor
    bracketed: Tensor
    diverged_at_hi: Tensor
    bisections: int

    @property
    def rho_star(self) -> Tensor:
        """The boundary: the geometric mean of the bracket, NaN where it was not bracketed."""
        mid = torch.sqrt(self.rho_lo * self.rho_hi)
        return torch.where(self.bracketed, mid, torch.full_like(mid, float("nan")))


def divergence_boundary(
    problem: Problem,
    method: str,
    eta: Tensor,
    x0: Tensor,
    *,
    lo: float,
    hi: float,
    rtol: float,
    steps: int,
    lam: float | None = None,
    blowup: float = 1e100,
) -> Boundary:
    """The radius ρ* beyond which ``method`` diverges within ``steps`` from ``x0``, at each step size of ``eta``, by
    bisection in log ρ over ``[lo, hi]`` until every bracket's ``hi/lo ≤ 1 + rtol``.

    Assumes divergence is monotone in ρ inside the bracket (check it on a grid where it matters). Configurations
    whose bracket holds no boundary (bounded at ``hi`` or diverged at ``lo``) are bisected anyway (all of a batch
    move together) and reported with ``bracketed = False``.

    Args:
        problem, method, lam: as for :func:`~samkit.dynamics.simulate`.
        eta: ``[B]`` step sizes; x0: ``[B, *shape]`` start points.
        lo, hi: the bracket (``0 < lo < hi``); rtol: the relative width at which bisection stops (> 0).
    """
    if not (0 < lo < hi):
        raise ValueError(f"the bracket must satisfy 0 < lo < hi, got lo={lo!r}, hi={hi!r}")
    if not rtol > 0:
        raise ValueError(f"rtol must be > 0, got {rtol!r}")
    eta = torch.as_tensor(eta, dtype=torch.float64)

    def diverges(rho: Tensor) -> Tensor:
        r = simulate(problem, method, eta=eta, rho=rho, x0=x0, steps=steps, lam=lam, record=(), blowup=blowup)
        return r.diverged

    rho_lo, rho_hi = torch.full_like(eta, lo), torch.full_like(eta, hi)
    at_hi = diverges(rho_hi)
    bracketed = ~diverges(rho_lo) & at_hi
    rounds = 0
    while bool(((rho_hi / rho_lo) > 1.0 + rtol).any()):
        mid = torch.sqrt(rho_lo * rho_hi)
        div = diverges(mid)
        rho_hi, rho_lo = torch.where(div, mid, rho_hi), torch.where(div, rho_lo, mid)
        rounds += 1
    return Boundary(rho_lo, rho_hi, bracketed, at_hi, rounds)


def factorization_start(eta: Tensor) -> Tensor:
    """Theorem 2's η-scaled start on ``½(xy)²``, one row per step size: ``y0 = η^(−1/2)``, ``x0 = y0/2`` (so that
    ``η·y0² = 1`` and GD is stable).

    >>> factorization_start(torch.tensor([0.25, 0.01], dtype=torch.float64)).tolist()
    [[1.0, 2.0], [5.0, 10.0]]
    """
    y0 = torch.sqrt(1.0 / torch.as_tensor(eta, dtype=torch.float64))
    return torch.stack([y0 / 2, y0], 1)


def factorization_boundary(
    eta: Tensor,
    method: str,
    *,
    lo: float,
    hi: float,
    rtol: float,
    steps: int,
    lam: float | None = None,
    blowup: float = 1e100,
) -> Boundary:
    """:func:`divergence_boundary` on Theorem 2's problem ``½(xy)²`` from its η-scaled start ``y0 = η^(−1/2)``,
    ``x0 = y0/2`` (so that GD is stable and USAM's boundary is ρ* ≈ η), at every step size of ``eta``.

    >>> b = factorization_boundary(torch.tensor([0.01]), "usam", lo=1e-4, hi=1.0, rtol=0.01, steps=3000)
    >>> round(b.rho_star.item() / 0.01, 1)  # ρ*/η ≈ 1.07 (paper-notes App. D)
    1.1
    """
    eta = torch.as_tensor(eta, dtype=torch.float64)
    return divergence_boundary(
        ScalarFactorization(),
        method,
        eta,
        factorization_start(eta),
        lo=lo,
        hi=hi,
        rtol=rtol,
        steps=steps,
        lam=lam,
        blowup=blowup,
    )
