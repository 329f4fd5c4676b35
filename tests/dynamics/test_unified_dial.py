"""Normalization as a dial (E9's theory): unified SAM, ε = ρ((1−λ)g + λg/‖g‖), is stable on a quadratic iff
η(β + (1−λ)ρβ²) < 2, settles on the 2-cycle a = ηρλβ/(2 − η(β + (1−λ)ρβ²)); on ½(xy)² its divergence boundary is
ρ*(0)/(1−λ) to leading order; its edge of stability in a deep net is the root of η·s·(1 + ρ_eff·s) = 2. Tested on
random rotated spectra the derivations never saw, and the end points against the existing USAM/SAM formulas."""

import math

import pytest
import torch

from samkit.dynamics import Quadratic, ScalarFactorization, divergence_boundary, simulate, theory
from samkit.experiments.e8 import stability_edge

F64 = torch.float64
LAMS = (0.1, 0.25, 0.5, 0.75, 0.9)
RHOS = (0.01, 0.1, 1.0)


def _spectra(n=12, seed=9):
    """Random spectra, d ∈ {2, 5, 20}: β log-uniform in [1, 30], the rest in [0.01β, 0.8β], a random rotation, and a
    random start (so x0 has a component along the top eigenvector)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        d = (2, 5, 20)[i % 3]
        beta = float(torch.exp(torch.rand((), generator=g, dtype=F64) * math.log(30.0)))
        rest = beta * (0.01 + 0.79 * torch.rand(d - 1, generator=g, dtype=F64))
        q = Quadratic(torch.cat([torch.tensor([beta], dtype=F64), rest]), rotate=True, seed=100 + i)
        out.append((q, torch.randn(d, generator=g, dtype=F64)))
    return out


SPECTRA = _spectra()


def test_end_points_are_usam_and_sam():
    beta, rho = torch.tensor(7.0, dtype=F64), torch.tensor(RHOS, dtype=F64)
    torch.testing.assert_close(theory.unified_threshold(beta, rho, 0.0), theory.usam_threshold(beta, rho))
    torch.testing.assert_close(theory.unified_threshold(beta, rho, 1.0), theory.sam_threshold(beta, rho))
    torch.testing.assert_close(
        theory.unified_cycle_amplitude(0.1, rho, beta, 1.0), theory.sam_cycle_amplitude(0.1, rho, beta)
    )
    usam = theory.unified_cycle_amplitude(0.1, rho, beta, 0.0)  # η(β + ρβ²) = 0.77, 1.19, 5.6
    assert usam.tolist() == [0.0, 0.0, math.inf]  # USAM converges to the minimizer where stable
    for eta, r, g in [(0.04, 0.005, 0.2), (0.03, 0.01, 0.05), (0.02, 0.02, 3.0)]:
        assert float(theory.unified_sharpness_edge(eta, r, 0.0, g)) == pytest.approx(stability_edge(eta, r), rel=1e-12)
        assert float(theory.unified_sharpness_edge(eta, r, 1.0, g)) == pytest.approx(stability_edge(eta, r / g), 1e-12)
    assert float(theory.scalar_factorization_unified_boundary(0.01, 0.0)) == float(
        theory.scalar_factorization_usam_boundary(0.01)
    )


def test_threshold_falls_in_the_unnormalized_share_only():
    beta, rho = 10.0, 0.1
    thr = theory.unified_threshold(beta, rho, torch.tensor(LAMS, dtype=F64))
    assert (thr.diff() > 0).all()  # more normalization, a larger admissible step
    # it depends on (1 − λ)ρ alone: λ = 0.5 at ρ is USAM at ρ/2
    assert float(theory.unified_threshold(beta, rho, 0.5)) == pytest.approx(float(theory.usam_threshold(beta, 0.05)))


def test_sharpness_edge_falls_in_lambda_iff_grad_norm_below_one():
    lams = torch.tensor((0.0, 0.25, 0.5, 0.75, 1.0), dtype=F64)
    falls = theory.unified_sharpness_edge(0.04, 0.005, lams, 0.2)
    rises = theory.unified_sharpness_edge(0.04, 0.005, lams, 5.0)
    flat = theory.unified_sharpness_edge(0.04, 0.005, lams, 1.0)
    assert (falls.diff() < 0).all() and (rises.diff() > 0).all()
    torch.testing.assert_close(flat, flat[:1].expand(5))
    # it is the root: η·s·(1 + ρ_eff·s) = 2
    s, rho_eff = falls, 0.005 * ((1 - lams) + lams / 0.2)
    torch.testing.assert_close(0.04 * s * (1 + rho_eff * s), torch.full_like(s, 2.0))


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan")])
def test_lambda_outside_the_unit_interval_is_refused(bad):
    for fn in (
        lambda: theory.unified_threshold(10.0, 0.1, bad),
        lambda: theory.unified_cycle_amplitude(0.1, 0.1, 10.0, bad),
        lambda: theory.scalar_factorization_unified_boundary(0.01, bad),
        lambda: theory.unified_sharpness_edge(0.04, 0.01, bad, 0.2),
    ):
        with pytest.raises(ValueError, match="lam must lie in"):
            fn()


@pytest.mark.parametrize("idx", range(len(SPECTRA)))
def test_threshold_on_random_spectra_two_percent_either_side(idx):
    q, x0 = SPECTRA[idx]
    for lam in LAMS[idx % 2 :: 2]:  # each spectrum half of the λ, alternating
        thr = theory.unified_threshold(q.beta, torch.tensor(RHOS, dtype=F64), lam)
        # below: bounded (a contraction plus a term of norm ≤ ηρλβ); above: the top mode grows at least by
        # 1 + 2·0.02 per step, so from |z₁(0)| ≳ 1e-3 it passes 1e12 within 1 000 steps; 3 000 leave room
        below = simulate(q, "unified", 0.98 * thr, RHOS, x0=x0, steps=3000, lam=lam, record=(), blowup=1e12)
        above = simulate(q, "unified", 1.02 * thr, RHOS, x0=x0, steps=3000, lam=lam, record=(), blowup=1e12)
        assert not below.diverged.any(), (lam, thr)
        assert above.diverged.all(), (lam, thr)


@pytest.mark.parametrize("idx", range(1, len(SPECTRA), 3))
def test_cycle_amplitude_on_random_spectra(idx):
    q, x0 = SPECTRA[idx]
    for lam in (0.25, 0.5, 0.75):
        rho = torch.tensor(RHOS, dtype=F64)
        etas = torch.tensor([0.3, 0.6, 0.9], dtype=F64)[:, None] * theory.unified_threshold(q.beta, rho, lam)[None, :]
        R = rho[None, :].expand_as(etas)
        res = simulate(q, "unified", etas.reshape(-1), R.reshape(-1), x0=x0, steps=6000, lam=lam, record=())
        pred = theory.unified_cycle_amplitude(etas.reshape(-1), R.reshape(-1), q.beta, lam)
        amp = res.final.norm(dim=1)
        assert ((amp / pred - 1).abs() < 0.01).all(), (lam, amp, pred)
        top = q.Q[:, 0]
        torch.testing.assert_close((res.final @ top).abs(), amp, rtol=1e-3, atol=0)  # along the top eigenvector


def test_cycle_amplitude_grows_in_lambda_only_where_usam_is_stable():
    lams = torch.linspace(0.05, 1.0, 20, dtype=F64)
    beta = 10.0
    stable = theory.unified_cycle_amplitude(0.1, 0.01, beta, lams)  # η(β + ρβ²) = 1.1 < 2
    assert (stable.diff() > 0).all()
    unstable = theory.unified_cycle_amplitude(0.15, 1.0, beta, lams)  # η(β + ρβ²) = 16.5 > 2
    finite = torch.isfinite(unstable)
    assert finite.any() and (~finite).any() and (unstable[finite].diff() < 0).all()


def _boundary(lam, etas, steps=3000):
    etas = torch.tensor(etas, dtype=F64)
    y0 = torch.sqrt(1.0 / etas)
    return divergence_boundary(
        ScalarFactorization(),
        "unified",
        etas,
        torch.stack([y0 / 2, y0], 1),
        lo=1e-4,
        hi=1.0,
        rtol=0.005,
        steps=steps,
        lam=lam,
    )


def test_factorization_boundary_moves_as_one_over_one_minus_lambda():
    etas = [0.002, 0.01]
    ref = _boundary(0.0, etas)
    assert ref.bracketed.all()
    assert ((ref.rho_star / torch.tensor(etas, dtype=F64) - 1.07).abs() < 0.05).all()  # paper-notes App. D
    for lam in (0.5, 0.8):
        b = _boundary(lam, etas)
        pred = theory.scalar_factorization_unified_boundary(torch.tensor(etas, dtype=F64), lam, ref.rho_star)
        assert b.bracketed.all() and ((b.rho_star / pred - 1).abs() < 0.03).all(), (lam, b.rho_star, pred)
    sam = _boundary(1.0, etas)
    assert not sam.diverged_at_hi.any() and not sam.bracketed.any()  # SAM stays bounded for every ρ ≤ 1


def test_divergence_boundary_is_usam_threshold_on_a_quadratic_and_checks_its_bracket():
    q = Quadratic([10.0, 1.0])
    etas = torch.tensor([0.05, 0.1, 0.15], dtype=F64)
    b = divergence_boundary(
        q, "usam", etas, torch.ones(3, 2, dtype=F64), lo=1e-3, hi=10.0, rtol=1e-3, steps=3000, blowup=1e12
    )
    # USAM diverges iff η(β + ρβ²) > 2, i.e. ρ > ρ_thr = (2/η − β)/β²; a run at ρ_thr(1 + δ) grows by 1 + ηρβ²δ per
    # step, so from x0's top coordinate 1 it reaches 1e12 within the steps only once δ ≥ ln(1e12)/(steps·ηρ_thrβ²):
    # the measured boundary sits that far above, and no further (plus the bracket's width)
    pred = (2.0 / etas - 10.0) / 100.0
    lag = math.log(1e12) / (3000 * etas * pred * 100.0)
    assert (b.rho_star >= pred * (1 - 1e-3)).all() and (b.rho_star <= pred * (1 + lag + 2e-3)).all(), (b.rho_star, pred)
    assert b.bracketed.all() and (b.rho_hi / b.rho_lo <= 1.001).all() and b.bisections > 0
    none = divergence_boundary(q, "sam", etas[:1], torch.ones(1, 2), lo=1e-3, hi=10.0, rtol=0.1, steps=500)
    assert not none.bracketed.any() and torch.isnan(none.rho_star).all()
    with pytest.raises(ValueError, match="0 < lo < hi"):
        divergence_boundary(q, "usam", etas, torch.ones(3, 2), lo=1.0, hi=0.5, rtol=0.01, steps=10)
    with pytest.raises(ValueError, match="rtol"):
        divergence_boundary(q, "usam", etas, torch.ones(3, 2), lo=0.1, hi=0.5, rtol=0.0, steps=10)
