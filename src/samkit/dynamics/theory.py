"""Each theorem of Dai, Ahn & Sra (NeurIPS 2023), "The Crucial Role of Normalization in Sharpness-Aware
Minimization", as a function returning its prediction.

Theorem numbers follow the project's issue 3 (Theorem 1: quadratics / strongly convex; Theorem 2: scalar
factorization; Theorems 3–5: single neuron; Theorem 6: PL). The paper's exact constants were not available
when this was written (see ``paper-notes.md`` §0): every formula here is derived in its docstring and checked
against simulation in ``tests/dynamics``. Where a theorem only says ≈ or O(·), the leading-order value is
returned. All functions accept floats or tensors and broadcast (float inputs give float64 0-d tensors).

>>> from samkit.dynamics import theory
>>> float(theory.gd_threshold(10.0)), float(theory.usam_threshold(10.0, 0.1))
(0.2, 0.1)
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "gd_threshold",
    "sam_threshold",
    "usam_threshold",
    "sam_cycle_amplitude",
    "sam_cycle_loss",
    "sam_strongly_convex_neighbourhood",
    "sam_strongly_convex_loss_bound",
    "gd_single_neuron_limit",
    "usam_single_neuron_limit",
    "sam_single_neuron_limit",
    "scalar_factorization_sam_radius",
    "scalar_factorization_usam_boundary",
    "usam_pl_distance_bound",
    "SCALAR_FACTORIZATION_SAM_CONSTANT",
]

Num = float | Tensor


def _t(v: Num) -> Tensor:
    return torch.as_tensor(v, dtype=torch.float64)


def gd_threshold(beta: Num) -> Tensor:
    """Theorem 1 (GD part): GD on ``½xᵀAx`` with ``λ_max(A) = β`` is stable iff ``η < 2/β``; returns ``2/β``.

    This is also SAM's threshold for every ρ ≥ 0 (see :func:`sam_threshold`).

    >>> float(gd_threshold(4.0))
    0.5
    """
    return 2.0 / _t(beta)


def sam_threshold(beta: Num, rho: Num = 0.0) -> Tensor:
    """Theorem 1 (SAM part): on a quadratic with top eigenvalue β, SAM stays bounded for ``η < 2/β`` and
    diverges for ``η > 2/β`` (generic x0), for every ρ ≥ 0. Returns ``2/β`` broadcast against ``rho``.

    Why: SAM's extra term ``ηρAu`` (``‖u‖ = 1``) is bounded by ``ηρβ``, so coordinatewise
    ``|x_i⁺| ≤ |1 − ηλ_i||x_i| + ηρλ_i``. The same bound holds for a separable μ-strongly convex β-smooth loss.

    >>> sam_threshold(10.0, torch.tensor([0.01, 1.0])).tolist()
    [0.2, 0.2]
    """
    return 2.0 / _t(beta) + 0.0 * _t(rho)


def usam_threshold(beta: Num, rho: Num) -> Tensor:
    """Theorem 1 (USAM part): on ``½xᵀAx`` with ``λ_max(A) = β``, USAM's iteration matrix is
    ``I − ηA − ηρA²``, so it converges iff ``η(β + ρβ²) < 2`` and diverges for ``η > 2/(β + ρβ²)`` when
    x0 has a component along the top eigenvector. Returns ``2/(β + ρβ²)``, which shrinks as ρ grows.

    Assumptions: quadratic (or, for divergence, a loss whose curvature tends to β far away, e.g.
    :class:`~samkit.dynamics.SmoothStronglyConvex`, started far from the minimizer).

    >>> float(usam_threshold(10.0, 1.0))
    0.01818181818181818
    """
    beta = _t(beta)
    return 2.0 / (beta + _t(rho) * beta * beta)


def sam_cycle_amplitude(eta: Num, rho: Num, beta: Num) -> Tensor:
    """Theorem 1 (SAM's limit): on a quadratic with top eigenvalue β (simple) and ``η < 2/β``, SAM converges
    (generic x0) to the period-2 cycle ``x = ±a e₁`` along the top eigenvector with ``a = ηρβ/(2 − ηβ)``.

    Check: ``x = a e₁`` gives ``x⁺ = ((1 − ηβ)a − ηρβ) e₁ = −a e₁``. Needs the other directions to contract,
    which holds when the top eigenvalue is simple. Returns ``inf`` for ``η ≥ 2/β``.

    >>> round(float(sam_cycle_amplitude(0.18, 0.1, 10.0)), 12)
    0.9
    """
    eta, rho, beta = _t(eta), _t(rho), _t(beta)
    den = 2.0 - eta * beta
    return torch.where(den > 0, eta * rho * beta / den.clamp_min(1e-300), torch.full_like(den, float("inf")))


def sam_cycle_loss(eta: Num, rho: Num, beta: Num) -> Tensor:
    """Loss on SAM's 2-cycle of a quadratic: ``½ β a²`` with ``a`` from :func:`sam_cycle_amplitude`.

    >>> round(float(sam_cycle_loss(0.1, 0.1, 10.0)), 12)
    0.05
    """
    a = sam_cycle_amplitude(eta, rho, beta)
    return 0.5 * _t(beta) * a * a


def sam_strongly_convex_neighbourhood(eta: Num, rho: Num, beta: Num, mu: Num) -> Tensor:
    """Theorem 1 (strongly convex SAM): for a μ-strongly convex, β-smooth L and ``0 < η ≤ 1/β``, every ρ ≥ 0,

        ``L(x_T) − L* ≤ (1 − μη)^T (L(x₀) − L*) + ηβ³ρ²/(2μ)``,

    so ``limsup L(x_t) − L* ≤ ηβ³ρ²/(2μ)``: the value returned, a bound on the **loss gap**. In the
    Euclidean norm, ``‖x − x*‖ ≤ √(2·gap/μ) = βρ√(ηβ)/μ``.

    Derivation: with ``δ = ∇L(x + ρu) − ∇L(x)``, smoothness gives ``‖δ‖ ≤ βρ``, monotonicity of ∇L gives
    ``⟨∇L(x), δ⟩ ≥ 0`` (δ pairs with ``ρu ∥ ∇L``); the descent lemma with ``η ≤ 1/β`` gives
    ``L⁺ ≤ L − (η/2)‖∇L‖² + η²β³ρ²/2``; strong convexity ``‖∇L‖² ≥ 2μ(L − L*)`` and unrolling give the bound.
    Tight: on ``½βx²`` with ``η = 1/β`` SAM's 2-cycle has loss exactly ``βρ²/2`` = the bound.

    >>> round(float(sam_strongly_convex_neighbourhood(0.1, 0.1, 10.0, 10.0)), 12)
    0.05
    """
    eta, rho, beta, mu = _t(eta), _t(rho), _t(beta), _t(mu)
    return eta * beta**3 * rho**2 / (2.0 * mu)


def sam_strongly_convex_loss_bound(eta: Num, rho: Num, beta: Num, mu: Num, loss_gap: Num, t: Num) -> Tensor:
    """The full bound of :func:`sam_strongly_convex_neighbourhood` at step ``t``:
    ``(1 − μη)^t · loss_gap + ηβ³ρ²/(2μ)`` (same assumptions, ``η ≤ 1/β``).

    >>> float(sam_strongly_convex_loss_bound(0.1, 0.0, 1.0, 1.0, 2.0, 1))
    1.8
    """
    eta, mu = _t(eta), _t(mu)
    return (1.0 - mu * eta) ** _t(t) * _t(loss_gap) + sam_strongly_convex_neighbourhood(eta, rho, beta, mu)


def gd_single_neuron_limit(x0: Num, y0: Num, eta: Num) -> Tensor:
    """Theorem 3 (GD on ``ℓ(xy)``, Ahn et al. 2023a): from ``|y0| > |x0|`` (generic), GD converges to
    ``(0, y∞)`` with ``y∞² ≈ min(y0² − x0², 2/η)``; returns that value of ``y∞²`` (the sharpness there).

    Assumptions: ℓ convex, even, 1-Lipschitz, ℓ″(0) = 1, ℓ′ saturating (log cosh, √(1+s²)); η small. The ≈
    hides O(η)-relative corrections; simulations land slightly below the minimum.

    >>> float(gd_single_neuron_limit(1.2, 3.1, 0.25))
    8.0
    """
    x0, y0 = _t(x0), _t(y0)
    return torch.minimum(y0 * y0 - x0 * x0, 2.0 / _t(eta))


def usam_single_neuron_limit(x0: Num, y0: Num, eta: Num, rho: Num) -> Tensor:
    """Theorem 4 (USAM on ``ℓ(xy)`` is trapped): USAM's perturbation ``ρℓ′(xy)(y, x)`` vanishes on the
    minima, so like GD it stops at ``(0, y∞)``; the only change is the stability condition at ``(0, y)``,
    ``η(y² + ρy⁴) ≤ 2``. Returns ``min(y0² − x0², s)`` where ``s = (√(1 + 8ρ/η) − 1)/(2ρ)`` solves
    ``(1 + ρs)s = 2/η`` (``s = 2/η`` at ρ = 0). Read it as an upper envelope: large early perturbations can
    land USAM lower, and it then stays frozen.

    >>> round(float(usam_single_neuron_limit(0.5, 5.0, 0.05, 0.5)), 12)
    8.0
    """
    x0, y0, eta, rho = _t(x0), _t(y0), _t(eta), _t(rho)
    s = (4.0 / eta) / (1.0 + torch.sqrt(1.0 + 8.0 * rho / eta))  # = (√(1+8ρ/η) − 1)/(2ρ), stable at ρ → 0
    return torch.minimum(y0 * y0 - x0 * x0, s)


def sam_single_neuron_limit(x0: Num, y0: Num, eta: Num, rho: Num) -> Tensor:
    """Theorem 5 (SAM on ``ℓ(xy)`` drifts): SAM's perturbation keeps length ρ on the minima, so after
    reaching the y-axis it keeps sliding down it, ``y⁺ ≈ y − ηρℓ′(ρ|y|)`` (linear while ρ|y| ≳ 1, then
    geometric at rate ≈ ηρ² per step), to the flattest minimum, the origin: ``y∞² = o(1)``. Returns 0
    (broadcast), the leading-order value; the time to get there is ~ ``1/(ηρ²)`` steps.

    >>> sam_single_neuron_limit(1.2, 3.1, 0.1, torch.tensor([0.1, 0.05])).tolist()
    [0.0, 0.0]
    """
    return 0.0 * (_t(x0) + _t(y0) + _t(eta) + _t(rho))


#: Measured constant of :func:`scalar_factorization_sam_radius` (see its docstring).
SCALAR_FACTORIZATION_SAM_CONSTANT = 1.0


def scalar_factorization_sam_radius(rho: Num, eta: Num | None = None) -> Tensor:
    """Theorem 2 (SAM on ``½(xy)²``): SAM with any ρ (η below GD's threshold at the start) ends in an
    O(ρ) neighbourhood of the flattest minimum (0, 0). Returns the leading value ``C·ρ`` with
    ``C = SCALAR_FACTORIZATION_SAM_CONSTANT = 1``: a bound on ``limsup ‖(x_t, y_t)‖``.

    Derivation of the O(ρ) scale: while ``|y| ≫ ρ`` SAM's normalized perturbation keeps a component ρ across
    the y-axis, so ``y`` keeps decreasing (``y⁺ ≈ y − ηρ²y``...); once ``‖(x, y)‖ ≲ ρ`` the perturbed point has
    norm ≤ ‖(x, y)‖ + ρ ≤ 2ρ and the loss ``½(xy)²`` can no longer drive the iterate out of a ball of radius
    ~ρ. In simulation (tests/dynamics) the final ``‖(x, y)‖`` is far below ρ (the iterates reach ~0), so
    ``C = 1`` is a conservative constant; ``eta`` is accepted for a uniform signature and ignored.

    >>> float(scalar_factorization_sam_radius(0.5))
    0.5
    """
    return SCALAR_FACTORIZATION_SAM_CONSTANT * _t(rho)


def scalar_factorization_usam_boundary(eta: Num) -> Tensor:
    """Theorem 2 (USAM on ``½(xy)²``): with the initialization scaled so that GD is stable
    (``η·y0² = O(1)``, e.g. ``y0² = 1/η``, ``x0 = y0/2``), USAM diverges once ``ρ ≳ η``; returns the
    leading-order boundary ``ρ* = η``.

    Why: USAM's perturbation ``ρ·xy·(y, x)`` is of relative size ``ρ·y²`` ~ ``ρ/η`` at that
    initialization; once it is O(1) the perturbed point's gradient overshoots and grows cubically. The
    measured constant is ≈ 1.07 (paper-notes App. D; re-measured in tests/dynamics).

    >>> float(scalar_factorization_usam_boundary(0.01))
    0.01
    """
    return _t(eta) * 1.0


def usam_pl_distance_bound(beta: Num, mu: Num, eta: Num, rho: Num, loss_gap: Num) -> Tensor:
    """Theorem 6 (USAM under PL travels a bounded distance): for a β-smooth loss that is μ-PL
    (``‖∇L‖² ≥ 2μ(L − L*)``) on the region visited, with ``ρ < 1/β`` and
    ``κ = (1 − βρ) − (βη/2)(1 + βρ)² > 0``, USAM's path length satisfies

        ``Σ_t ‖x_{t+1} − x_t‖ ≤ η(1 + βρ)·√(2β·(L(x₀) − L*)) / (1 − √q)``,  ``q = max(0, 1 − 2μηκ)``.

    (So ``‖x_∞ − x₀‖`` is at most this: USAM stops near where GD would; it cannot drift along the minima.)

    Derivation: ``g̃ = ∇L(x + ρ∇L) = ∇L + δ`` with ``‖δ‖ ≤ βρ‖∇L‖``, hence ``⟨∇L, g̃⟩ ≥ (1 − βρ)‖∇L‖²`` and
    ``‖g̃‖ ≤ (1 + βρ)‖∇L‖``; the descent lemma gives ``L⁺ ≤ L − ηκ‖∇L‖²``, so PL gives
    ``gap_{t+1} ≤ q·gap_t``. Each step moves ``η‖g̃‖ ≤ η(1 + βρ)‖∇L(x_t)‖ ≤ η(1 + βρ)√(2β gap_t)``
    (smoothness, L ≥ L*); summing the geometric series gives the bound. Returns ``inf`` when κ ≤ 0.

    >>> round(float(usam_pl_distance_bound(1.0, 1.0, 0.5, 0.0, 0.5)), 12)
    1.0
    """
    beta, mu, eta, rho, gap = _t(beta), _t(mu), _t(eta), _t(rho), _t(loss_gap)
    kappa = (1.0 - beta * rho) - 0.5 * beta * eta * (1.0 + beta * rho) ** 2
    q = (1.0 - 2.0 * mu * eta * kappa).clamp_min(0.0)
    val = eta * (1.0 + beta * rho) * torch.sqrt(2.0 * beta * gap.clamp_min(0.0)) / (1.0 - torch.sqrt(q))
    return torch.where(kappa > 0, val, torch.full_like(val, float("inf")))
