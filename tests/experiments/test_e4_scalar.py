"""E4 (scalar factorization): USAM's boundary by bisection on a ρ bracket that does not depend on η, the slope's
confidence interval, and E4.1's test that SAM keeps sliding (a stalled SAM, or GD, fails it)."""

from __future__ import annotations

import numpy as np
import pytest

from samkit.experiments import get
from samkit.experiments.base import Table

NAME = "E4"


def test_bisection_finds_the_boundary_to_its_tolerance():
    e4 = get("E4")
    params = {
        "kind": "boundary",
        "etas": [0.005, 0.02],
        "bisect_rho_min": 1e-4,
        "bisect_rho_max": 1.0,
        "bisect_tol": 0.01,
        "region_steps": 3000,
        "blowup": 1e12,
    }
    r = e4.run_unit(params)
    lo, hi = np.array(r["rho_lo"]), np.array(r["rho_hi"])
    assert all(r["bracketed"]) and (hi / lo <= 1.01).all() and r["bisections"] == 10
    # an independent calibration (shared/research/paper-notes.md, appendix D) found ρ* ≈ 1.07 η at these η
    assert np.sqrt(lo * hi) / np.array(params["etas"]) == pytest.approx([1.07, 1.07], abs=0.02)
    # the ends of the bracket straddle the boundary: USAM diverges at hi and not at lo
    import torch

    from samkit.dynamics import ScalarFactorization, simulate

    etas = torch.tensor(params["etas"], dtype=torch.float64)
    y0 = torch.sqrt(1.0 / etas)

    def diverges(rho):
        x0 = torch.stack([y0 / 2, y0], 1)
        return simulate(
            ScalarFactorization(), "usam", etas, torch.tensor(rho), x0, 3000, record=(), blowup=1e12
        ).diverged

    assert diverges(hi).all() and not diverges(lo).any()


def test_the_slope_interval():
    e4 = get("E4")
    etas = np.array([0.002, 0.005, 0.01, 0.02, 0.05])
    exact = e4._slope(etas, 1.07 * etas)
    assert exact.mean == pytest.approx(1.0) and exact.hi - exact.lo < 1e-9
    noisy = e4._slope(etas, 1.07 * etas * np.array([1.0, 1.4, 0.8, 1.3, 0.9]))
    assert noisy.lo < 1.0 < noisy.hi and noisy.hi - noisy.lo > 0.1
    assert e4._slope(etas[:2], etas[:2]) is None  # two points: no interval


def test_tiny_claims_and_contrary_data(tiny, kit):
    exp, res, cfg, data, _ = tiny
    assert kit.verdicts(res.claims) == {"E4.1": "PASS", "E4.2": "PASS", "E4.3": "PASS"}
    # a SAM that stalls at a small distance at every ρ stays inside the O(ρ) radius but does not slide on: FAIL
    stalled = kit.edit(data, "sam_radius", {"method": "sam"}, tail_max_norm=1e-3)
    c = {c.id: c for c in exp.claims(cfg, stalled)}["E4.1"]
    assert c.verdict == "FAIL" and "not decreasing" in c.measured
    # GD's endpoint labelled SAM: outside the radius and the same at every ρ
    gd = data["sam_radius"].where(method="gd").first("tail_max_norm")
    assert (
        kit.verdicts(exp.claims(cfg, kit.edit(data, "sam_radius", {"method": "sam"}, tail_max_norm=gd)))["E4.1"]
        == "FAIL"
    )


def test_a_boundary_whose_slope_interval_straddles_the_band_is_inconclusive(tiny):
    exp, _, cfg, data, _ = tiny
    etas = np.array(data["usam_boundary"].col("eta"))
    assert len(etas) == 3
    # ρ*/η stays within [0.5, 2], but the boundary is a little steeper (slope 1.1) and scattered: with three η the
    # slope's interval reaches past 1.15, and nothing decides
    rho = etas * 1.07 * (etas / 0.01) ** 0.1 * np.array([1.0, 1.5, 0.7])
    rows = [dict(r, rho_star=float(x)) for r, x in zip(data["usam_boundary"].rows, rho)]
    got = {c.id: c for c in exp.claims(cfg, {**data, "usam_boundary": Table(rows)})}["E4.2"]
    sl = got.values["slope"]
    assert sl["lo"] < 1.15 < sl["hi"] and got.verdict == "INCONCLUSIVE"
