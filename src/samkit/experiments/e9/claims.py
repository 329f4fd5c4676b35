"""E9's claims, one function each, from the tables and the analysis (:mod:`samkit.experiments.e9.analysis`).

E9.1–E9.3 are deterministic (float64 dynamics, no seeds): exact counts against stated tolerances. E9.4 and E9.5 are
one number per seed — the worst λ of that seed — judged on the 90% Student-t interval over the seeds
(:mod:`samkit.experiments.stats`); a deep-net run that diverges or never settles while GD, on the same seed,
reached its own edge contradicts the prediction and FAILs the claim.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from samkit.dynamics import theory
from samkit.experiments.base import Claim, Table, fmt, make_claim
from samkit.experiments.e9.analysis import Analysis, phase_labels
from samkit.experiments.e9.config import factorization_setting, net_setting, quadratic_setting
from samkit.experiments.stats import SeedInterval, judge, seed_interval

_RULE = "90% t-interval over seeds of the per-seed worst λ: PASS if it lies wholly within, FAIL if wholly outside"
_NET_DATA = ["data/net_runs.csv", "data/net_curves.csv"]


def phase_diagrams(a: Analysis, config: Mapping[str, Any], phase: Table) -> Claim:
    """E9.1: at every λ the measured stable/diverged label of each cell away from the threshold is the dial's."""
    band, need = float(config["band"]), float(config["min_agreement"])
    parts, why, fracs = [], [], []
    for lam in config["lams"]:
        t = phase.where(lam=float(lam))
        eta, rho, div = t.col("eta"), t.col("rho"), t.col("diverged").astype(bool)
        pred, thr = phase_labels(a.beta, lam, eta, rho)
        outside = np.abs(eta / thr - 1.0) > band
        agree = int(((pred == ~div) & outside).sum())
        n = int(outside.sum())
        if not (pred & outside).any() or not (~pred & outside).any():
            why.append(f"at λ={lam:g} the grid does not cross the threshold (no cell on one side)")
        fracs.append(agree / n if n else 0.0)
        parts.append(f"λ={lam:g}: {agree}/{n} ({int((~pred & outside).sum())} predicted to diverge)")
    return make_claim(
        id="E9.1",
        statement="Unified SAM, ε = ρ((1−λ)g + λg/‖g‖), on a quadratic is stable iff η(β + (1−λ)ρβ²) < 2: only the "
        "unnormalized share of the radius lowers the step-size threshold, from USAM's 2/(β+ρβ²) at λ=0 to GD's "
        "and SAM's 2/β at λ=1.",
        setting=quadratic_setting(config),
        prediction="stable iff η < 2/(β + (1−λ)ρβ²) (theory.unified_threshold), at every λ",
        measured="cells agreeing with the predicted label: " + "; ".join(parts),
        tolerance=f"at every λ at least {need:g} of the cells agree; cells with |η/threshold − 1| ≤ {band:g} excluded",
        passed=bool(fracs) and min(fracs) >= need,
        why=why,
        figure="phase_diagrams.png",
        data=["data/phase.csv"],
        values={"fraction": dict(zip((f"{v:g}" for v in config["lams"]), fracs))},
    )


def cycle_amplitude(a: Analysis, config: Mapping[str, Any], cycle: Table) -> Claim:
    """E9.2: below its threshold, unified SAM (λ > 0) ends on the 2-cycle ±a·e₁ with the dial's amplitude."""
    band, tol = float(config["band"]), float(config["cycle_tol"])
    t = Table([r for r in cycle.rows if float(r["lam"]) > 0])
    lam, eta, rho = t.col("lam"), t.col("eta"), t.col("rho")
    thr = theory.unified_threshold(a.beta, torch.as_tensor(rho), torch.as_tensor(lam)).numpy() if len(t) else eta
    inside = eta < (1.0 - band) * thr
    why = [] if inside.any() else ["no (η, ρ, λ > 0) of the cycle grid lies below its threshold"]
    pred = theory.unified_cycle_amplitude(
        torch.as_tensor(eta[inside]), torch.as_tensor(rho[inside]), a.beta, torch.as_tensor(lam[inside])
    ).numpy()
    meas, prev = t.col("amplitude")[inside], t.col("amplitude_prev")[inside]
    diverged = t.col("diverged").astype(bool)[inside] if inside.any() else np.zeros(0, bool)
    err = np.abs(meas - pred) / pred if inside.any() else np.zeros(0)
    swing = np.abs(prev - meas) / pred if inside.any() else np.zeros(0)
    worst = float(max(err.max(initial=0.0), swing.max(initial=0.0)))
    grows = _grows_where_usam_stable(a.beta, lam[inside], eta[inside], rho[inside], meas)
    return make_claim(
        id="E9.2",
        statement="Below its threshold unified SAM does not converge to the minimizer but to the 2-cycle ±a·e₁ with "
        "a = ηρλβ/(2 − η(β + (1−λ)ρβ²)): the neighbourhood it settles in grows with λρ where USAM itself is stable "
        "(η(β+ρβ²) < 2) and, where USAM diverges, shrinks from infinity as λ rises above the dial's threshold.",
        setting=quadratic_setting(config) + f"; cycle grid η∈{config['cycle_etas']}, ρ∈{config['cycle_rhos']}, λ > 0",
        prediction=f"a from {fmt(pred.min(initial=np.inf))} to {fmt(pred.max(initial=0.0))} "
        "(theory.unified_cycle_amplitude)",
        measured=f"{int(inside.sum())} (η, ρ, λ) below (1 − {band:g}) × threshold; max relative error "
        f"{fmt(err.max(initial=0.0))}, |x_T| − |x_(T−1)| relative {fmt(swing.max(initial=0.0))}; {int(diverged.sum())} "
        f"diverged; {grows}",
        tolerance=f"relative error ≤ {tol:g} at every (η, ρ, λ) below (1 − {band:g}) × its threshold, none diverged",
        passed=bool(inside.any()) and worst <= tol and not diverged.any(),
        why=why,
        figure="cycle_amplitude.png",
        data=["data/cycle.csv"],
        values={"max_rel_err": worst, "cells": int(inside.sum())},
    )


def _grows_where_usam_stable(beta: float, lam: np.ndarray, eta: np.ndarray, rho: np.ndarray, amp: np.ndarray) -> str:
    """A sentence on how the measured amplitude moves with λ at each (η, ρ) (report only)."""
    up = down = 0
    for e, r in sorted(set(zip(eta.tolist(), rho.tolist()))):
        sel = (eta == e) & (rho == r)
        if sel.sum() < 2:
            continue
        order = np.argsort(lam[sel])
        d = np.diff(amp[sel][order])
        usam_stable = e * (beta + r * beta * beta) < 2
        up += int(usam_stable and (d > 0).all())
        down += int((not usam_stable) and (d < 0).all())
    return f"amplitude rising in λ at {up} (η, ρ) where USAM is stable, falling at {down} where it diverges"


def factorization_boundary(a: Analysis, config: Mapping[str, Any]) -> Claim:
    """E9.3: on ½(xy)² the divergence boundary moves from ρ ≈ η (λ = 0) to (1 − λ)ρ ≈ η; SAM (λ = 1) stays bounded."""
    tol, kmax = float(config["boundary_tol"]), float(config["kappa_max"])
    bad, judged, skipped, worst, sam_own = [], 0, [], 0.0, []
    for r in a.factorization:
        lam, eta = float(r["lam"]), float(r["eta"])
        where = f"λ={lam:g}, η={eta:g}"
        if lam == 1.0:
            if r["diverged_at_sam_rho"]:
                bad.append(f"{where}: diverged at ρ = {config['sam_rho_max']:g}")
            if r["bracketed"]:
                sam_own.append(f"η={eta:g}: ρ*√η = {fmt(float(r['rho_star']) * math.sqrt(eta))}")
            continue
        if not r["bracketed"]:
            bad.append(f"{where}: no boundary in [{config['bisect_rho_min']:g}, {config['bisect_rho_max']:g}]")
            continue
        if lam == 0.0:
            ratio0 = float(r["rho_star"]) / eta
            if not 0.5 <= ratio0 <= 2.0:
                bad.append(f"{where}: USAM's ρ*/η = {fmt(ratio0)} outside Theorem 2's [0.5, 2]")
            continue
        if r["kappa"] > kmax:
            skipped.append(f"{where} (κ={fmt(r['kappa'])})")
            continue
        judged += 1
        dev = abs(float(r["ratio"]) - 1.0)
        worst = max(worst, dev)
        if not dev <= tol:
            bad.append(f"{where}: (1−λ)ρ*/ρ*(0) = {fmt(r['ratio'])}")
    inner = sorted({float(r["lam"]) for r in a.factorization if 0.0 < float(r["lam"]) < 1.0})
    ratios = "; ".join(
        f"λ={lam:g}: " + _range([float(r["ratio"]) for r in a.factorization if float(r["lam"]) == lam]) for lam in inner
    )
    measured = f"(1−λ)ρ*(λ)/ρ*(0) over η: {ratios or 'none'}; worst judged |… − 1| = {fmt(worst)} over {judged} cells"
    if skipped:
        measured += f"; not judged (κ > {kmax:g}): {', '.join(skipped)}"
    if sam_own:
        measured += f"; SAM's own boundary (ρ comparable to y0 = η^(−1/2); report only): {', '.join(sam_own)}"
    if bad:
        measured += "; " + "; ".join(bad)
    return make_claim(
        id="E9.3",
        statement="On the scalar factorization ½(xy)² (Theorem 2's problem, y0² = 1/η) only the unnormalized part "
        "drives the divergence: the boundary moves from USAM's ρ* ≈ η to (1−λ)ρ* ≈ ρ*(0), and SAM (λ=1) stays bounded.",
        setting=factorization_setting(config),
        prediction="ρ*(λ) = ρ*(0)/(1−λ) to leading order in κ = λρ*√η (theory.scalar_factorization_unified_boundary); "
        f"ρ*(0)/η ∈ [0.5, 2] (Theorem 2); SAM (λ=1) bounded at ρ = {config['sam_rho_max']:g} (Theorem 2's ρ = O(1))",
        measured=measured,
        tolerance=f"|(1−λ)ρ*(λ)/ρ*(0) − 1| ≤ {tol:g} at every (λ, η) with 0 < λ < 1 and κ ≤ {kmax:g}; every λ < 1 "
        "bracketed",
        passed=not bad and judged > 0,
        why=[] if judged or bad else [f"no (λ, η) with 0 < λ < 1 and κ ≤ {kmax:g}"],
        figure="factorization_boundary.png",
        data=["data/factorization.csv"],
        values={"worst": worst, "judged": judged},
    )


@dataclass
class _Judged:
    """The deep-net runs a claim can judge: the seeds (GD reached its edge, every λ's sharpness moved from its start),
    why nothing can be judged (if so), the judged runs that diverged or never settled, the per-seed interval of the
    claim's statistic (None when a run is broken or no seed is left), and the text that ends ``measured``."""

    seeds: list[int]
    why: list[str]
    broken: list[str]
    interval: SeedInterval | None
    tail: str


def _judge_net(a: Analysis, config: Mapping[str, Any], statistic: Callable[[list[dict]], float]) -> _Judged:
    """``statistic`` of each judged seed's runs (ascending λ) and its interval over the seeds."""
    seeds, out = [], []
    for s in a.seeds:
        if not a.gd_reached(s):
            out.append(f"{s} (GD did not reach its edge)")
        elif not all(r["moved"] for r in a.dial(s)):
            out.append(f"{s} (a run's plateau is within the band of its starting sharpness: no approach to judge)")
        else:
            seeds.append(s)
    why = [] if seeds else ["no seed on which GD reached its edge and every run's sharpness moved"]
    broken = []
    for s in seeds:
        for lam in a.lams:
            r = a.net.get(("unified", lam, s))
            if r is None:
                broken.append(f"λ={lam:g} seed {s}: no run")
            elif r["diverged"]:
                broken.append(f"λ={lam:g} seed {s} diverged")
            elif not r["stable"]:
                broken.append(f"λ={lam:g} seed {s} did not settle (std/mean {fmt(r['cv'])} > {config['stable_cv']:g})")
    iv = seed_interval({s: statistic(a.dial(s)) for s in seeds}) if seeds and not broken else None
    tail = ("; " + "; ".join(broken) if broken else "") + (f"; seeds left out: {', '.join(out)}" if out else "")
    return _Judged(seeds, why, broken, iv, tail)


def _range(values: list[float]) -> str:
    """``lo–hi`` of the values (one value alone when they agree to the digits shown)."""
    lo, hi = fmt(min(values), 4), fmt(max(values), 4)
    return lo if lo == hi else f"{lo}–{hi}"


def _per_lam(a: Analysis, seeds: list[int], field: str) -> str:
    """Per λ, the range over ``seeds`` of a run statistic (each seed's value is in the claim's ``values``)."""
    parts = []
    for lam in a.lams:
        vals = [a.net[("unified", lam, s)][field] for s in seeds if ("unified", lam, s) in a.net]
        if vals:
            parts.append(f"λ={lam:g}: {_range(vals)}")
    return "; ".join(parts)


def net_edge(a: Analysis, config: Mapping[str, Any]) -> Claim:
    """E9.4: in a deep net the sharpness hovers at the dial's edge, every λ, on the seeds' interval."""
    tol = float(config["edge_tol"])
    j = _judge_net(a, config, lambda runs: max(abs(r["edge_ratio"] - 1.0) for r in runs))
    iv = j.interval
    measured = "mean sharpness_t/edge_t per λ, range over the judged seeds: " + (
        _per_lam(a, j.seeds, "edge_ratio") or "none"
    )
    measured += "; plateau: " + (_per_lam(a, j.seeds, "plateau") or "none")
    if iv is not None:
        measured += f"; worst |mean sharpness_t/edge_t − 1| per seed: {iv.text()}"
    measured += j.tail
    return make_claim(
        id="E9.4",
        statement="Full-batch unified SAM on a deep net hovers at the dial's edge of stability, the root of "
        "η·s·(1 + ρ·s·((1−λ) + λ/‖g_t‖)) = 2 — USAM's λ* at λ=0, SAM's ‖g_t‖-dependent edge at λ=1.",
        setting=net_setting(config),
        prediction="mean over the last third of sharpness_t / edge_t = 1 at every λ (theory.unified_sharpness_edge "
        "with the full-batch ‖g_t‖ of each measurement)",
        measured=measured,
        tolerance=f"|mean sharpness_t/edge_t − 1| ≤ {tol:g}; a run that diverges or does not settle while GD reached "
        f"its edge fails; {_RULE}",
        verdict="FAIL" if iv is None else judge(iv, "<=", tol),
        why=j.why,
        figure="plateau.png",
        data=_NET_DATA,
        values={"worst": iv.to_dict() if iv else None},
    )


def net_falls(a: Analysis, config: Mapping[str, Any]) -> Claim:
    """E9.5: the plateau falls as λ grows — where ‖g_t‖ < 1, which is when the dial's edge falls in λ."""
    j = _judge_net(a, config, lambda runs: min(p["plateau"] / q["plateau"] - 1.0 for p, q in zip(runs, runs[1:])))
    iv, why = j.interval, list(j.why)
    big = [f"λ={lam:g} seed {s}" for s in j.seeds for lam, r in zip(a.lams, a.dial(s)) if not r["grad_norm"] < 1.0]
    if big:
        why.append("‖g_t‖ ≥ 1 over the last third (there the edge rises in λ): " + ", ".join(big))
    measured = "plateau per λ, range over the judged seeds: " + (_per_lam(a, j.seeds, "plateau") or "none")
    measured += "; mean ‖g_t‖ over the last third: " + (_per_lam(a, j.seeds, "grad_norm") or "none")
    if iv is not None:
        measured += f"; smallest relative fall between neighbouring λ per seed: {iv.text()}"
    measured += j.tail
    return make_claim(
        id="E9.5",
        statement="The more normalization, the flatter: the deep net's plateau falls at every step of λ, as the dial's "
        "edge does wherever ‖g_t‖ < 1 (ρ_eff = ρ((1−λ) + λ/‖g_t‖) grows with λ).",
        setting=net_setting(config),
        prediction="plateau(λ_i) > plateau(λ_(i+1)) for neighbouring λ of net_lams",
        measured=measured,
        tolerance="per seed the smallest relative fall plateau(λ_i)/plateau(λ_(i+1)) − 1 over neighbouring λ; 90% "
        "t-interval over seeds > 0 (a tie gives 0: not a PASS)",
        verdict="FAIL" if iv is None else judge(iv, ">", 0.0),
        why=why,
        figure="plateau.png",
        data=_NET_DATA,
        values={"smallest_fall": iv.to_dict() if iv else None},
    )


def claims(a: Analysis, config: Mapping[str, Any], data: Mapping[str, Table]) -> list[Claim]:
    """E9.1–E9.5."""
    return [
        phase_diagrams(a, config, data["phase"]),
        cycle_amplitude(a, config, data["cycle"]),
        factorization_boundary(a, config),
        net_edge(a, config),
        net_falls(a, config),
    ]
