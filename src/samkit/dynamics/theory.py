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
    "unified_threshold",
    "unified_cycle_amplitude",
    "scalar_factorization_unified_boundary",
    "unified_sharpness_edge",
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


# -- normalization as a dial: unified SAM, ε = ρ((1 − λ) g + λ g/‖g‖) (Oikonomou & Loizou 2025) ---------------------


def _check_lam(lam: Tensor) -> Tensor:
    if bool(((lam < 0) | (lam > 1) | torch.isnan(lam)).any()):
        raise ValueError(f"lam must lie in [0, 1] (0 is USAM, 1 is SAM), got {lam.tolist()!r}")
    return lam


def unified_threshold(beta: Num, rho: Num, lam: Num) -> Tensor:
    """Unified SAM on a quadratic: stable iff ``η(β + (1 − λ)ρβ²) < 2``; returns ``2/(β + (1 − λ)ρβ²)``.

    USAM's threshold at λ = 0 (:func:`usam_threshold`), SAM's 2/β at λ = 1 (:func:`sam_threshold`), in between a
    threshold that only the unnormalized share ``(1 − λ)ρ`` of the radius lowers.

    Derivation: on ``½xᵀHx`` with ``g = Hx``, ``∇L(x + ε) = Hx + ρ(1 − λ)H²x + ρλ Hg/‖g‖``, so the update is the
    linear map ``x ← (I − ηH − η(1 − λ)ρH²)x`` plus ``−ηρλ Hg/‖g‖``, a term of norm ≤ ηρλβ.
    *Bounded:* every eigenvalue ``h ≤ β`` of H gives the multiplier ``1 − ηh − η(1 − λ)ρh²``, which lies in
    (−1, 1) for all of them iff ``η(β + (1 − λ)ρβ²) < 2`` (``h + ch²`` increases in h > 0); a contraction plus a
    bounded term keeps ``‖x‖ ≤ ‖x₀‖ + ηρλβ/(1 − q)``. *Divergent:* above the threshold the top-eigenvector
    coordinate obeys ``z⁺ = (μ − ηρλβ²/‖g‖) z`` with ``μ = 1 − η(β + (1 − λ)ρβ²) < −1``: the normalized part adds
    to the overshoot, so ``|z|`` grows at least geometrically from any ``z₀ ≠ 0``. The threshold is exact, and the
    same formula for every λ ∈ [0, 1].

    >>> float(unified_threshold(10.0, 0.1, 0.0)), float(unified_threshold(10.0, 0.1, 1.0))
    (0.1, 0.2)
    >>> round(float(unified_threshold(10.0, 0.1, 0.5)), 12)
    0.133333333333
    """
    beta, lam = _t(beta), _check_lam(_t(lam))
    return 2.0 / (beta + (1.0 - lam) * _t(rho) * beta * beta)


def unified_cycle_amplitude(eta: Num, rho: Num, beta: Num, lam: Num) -> Tensor:
    """Unified SAM's limit on a quadratic (simple top eigenvalue β, below :func:`unified_threshold`): the
    2-cycle ``±a e₁`` with ``a = ηρλβ / (2 − η(β + (1 − λ)ρβ²))``; ``inf`` at or above the threshold.

    Check: on ``x = a e₁``, ``‖g‖ = βa`` and ``x⁺ = (1 − ηβ − η(1 − λ)ρβ²) a e₁ − ηρλβ e₁ = −a e₁``; the map
    ``z ↦ μz − ηρλβ·sign z`` composed twice has slope μ² < 1, so the cycle attracts. λ = 1 gives SAM's
    :func:`sam_cycle_amplitude`, λ = 0 gives 0 (USAM converges to the minimizer). The neighbourhood grows with
    λρ only where USAM itself is stable (``η(β + ρβ²) < 2``): there ``a`` increases in λ; where USAM diverges,
    ``a`` is finite only for λ above the dial's threshold and *decreases* in λ (it is infinite at the threshold).

    >>> round(float(unified_cycle_amplitude(0.18, 0.1, 10.0, 1.0)), 12)
    0.9
    >>> round(float(unified_cycle_amplitude(0.1, 0.1, 10.0, 0.5)), 12)
    0.1
    """
    eta, rho, beta, lam = _t(eta), _t(rho), _t(beta), _check_lam(_t(lam))
    den = 2.0 - eta * (beta + (1.0 - lam) * rho * beta * beta)
    return torch.where(den > 0, eta * rho * lam * beta / den.clamp_min(1e-300), torch.full_like(den, float("inf")))


def scalar_factorization_unified_boundary(eta: Num, lam: Num, usam_boundary: Num | None = None) -> Tensor:
    """Unified SAM on ``½(xy)²`` from ``y0² = 1/η``, ``x0 = y0/2``: the radius beyond which it diverges,
    ``ρ*(λ) = ρ*(0) / (1 − λ)`` to leading order (``inf`` at λ = 1); ``ρ*(0)`` is ``usam_boundary`` when given
    (a measured USAM boundary), else Theorem 2's ``η`` (:func:`scalar_factorization_usam_boundary`).

    Derivation: the perturbation splits into ``ρ(1 − λ)g``, which is USAM's with radius ``(1 − λ)ρ``, and
    ``ρλ g/‖g‖``, a displacement of length ``λρ`` of the point where the gradient is taken. At this
    initialization the coordinates are of size ``y0 = η^(−1/2)`` and USAM's divergence sets in within a few steps,
    while they are still that large; the normalized displacement changes the gradient there by a relative
    ``O(λρ/y0) = O(λρ√η)``. So the divergence condition is USAM's with ``(1 − λ)ρ`` in place of ρ, up to a
    relative correction ``κ = λρ*√η = λη^(3/2)/(1 − λ)`` (with Theorem 2's ρ* ≈ η), small for small η unless
    λ → 1. Simulation agrees within 1% where κ ≤ 0.005 and the normalized part lowers the boundary a little as κ
    grows (−5% at κ ≈ 0.03); at λ = 1 nothing drives the divergence and SAM stays bounded for ρ = O(1)
    (Theorem 2).

    >>> float(scalar_factorization_unified_boundary(0.01, 0.5))
    0.02
    >>> scalar_factorization_unified_boundary(0.01, torch.tensor([0.0, 1.0])).tolist()
    [0.01, inf]
    """
    eta, lam = _t(eta), _check_lam(_t(lam))
    base = scalar_factorization_usam_boundary(eta) if usam_boundary is None else _t(usam_boundary)
    free = 1.0 - lam
    return torch.where(free > 0, base / free.clamp_min(1e-300), torch.full_like(free * base, float("inf")))


def unified_sharpness_edge(eta: Num, rho: Num, lam: Num, grad_norm: Num) -> Tensor:
    """The sharpness at which full-batch unified SAM hovers (its edge of stability): the positive root λ_e of
    ``η·λ_e·(1 + ρ_eff·λ_e) = 2`` with ``ρ_eff = ρ((1 − λ) + λ/‖g_t‖)``, i.e.
    ``λ_e = 4 / (η(1 + √(1 + 8ρ_eff/η)))``.

    Derivation (Theorem 1 applied locally): near a minimum, along the top Hessian eigenvector the unified
    perturbation acts on the curvature λ_e as ``ρ_eff·λ_e²`` — ``ρ(1 − λ)`` from the unnormalized part, ``ρλ/‖g_t‖``
    from the normalized one (Long & Bartlett 2023's SAM edge) — so the step is stable iff
    ``η(λ_e + ρ_eff λ_e²) < 2`` and progressive sharpening stops at the root. λ = 0 gives USAM's λ*
    (independent of ‖g_t‖), λ = 1 SAM's ‖g_t‖-dependent edge, ρ = 0 GD's 2/η. Since ``ρ_eff`` is linear in λ with
    slope ``ρ(1/‖g_t‖ − 1)``, the edge **falls** as λ grows iff ``‖g_t‖ < 1`` (and rises iff ``‖g_t‖ > 1``).

    >>> round(float(unified_sharpness_edge(0.04, 0.01, 0.0, 0.2)), 3)
    36.603
    >>> float(unified_sharpness_edge(0.04, 0.0, 0.5, 0.2))
    50.0
    """
    eta, rho, lam, gn = _t(eta), _t(rho), _check_lam(_t(lam)), _t(grad_norm)
    rho_eff = rho * ((1.0 - lam) + lam / gn)
    return 4.0 / (eta * (1.0 + torch.sqrt(1.0 + 8.0 * rho_eff / eta)))
