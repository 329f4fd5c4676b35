"""E7's findings for the report's summary: where the robustness claim does not hold on an architecture, what happened
instead, with the mechanism's numbers — all computed from the analysis and the claims, never typed in.

A finding is written for a model whose precondition (E7.0) PASSes but whose robustness claims (E7.1, E7.2) do not
both PASS. It says the claim **reverses** when one of their intervals over seeds lies wholly below 0 (USAM's stable
range reaches further than SAM's, or SAM fails where USAM trains more often than the other way round), and that it
is **not confirmed** otherwise (a tie or an interval that straddles). Its numbers: how far ‖g‖ falls (SGD), where each
method's stable range ends, the realised late ‖ε‖ at those ρ, test accuracy at the first ρ where SAM fails on most
seeds, and the largest realised mean ‖ε‖ at which each method trains on every seed (accuracy against ‖ε‖).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from samkit.experiments.base import Claim, fmt
from samkit.experiments.e7.analysis import ModelAnalysis, Point
from samkit.experiments.e7.config import METHODS


def _median_top(a: ModelAnalysis, method: str) -> int:
    """The grid index of the median over seeds of the last ρ of ``method``'s stable range (−1: below the grid)."""
    return int(np.floor(np.median([a.stable_top(method, s) for s in a.seeds])))


def _median_rho(a: ModelAnalysis, method: str) -> str:
    k = _median_top(a, method)
    return fmt(a.grid[k]) if k >= 0 else "none (it fails at the smallest ρ)"


def _acc(p: Point | None) -> str:
    """Mean test accuracy of the finite seeds and how many seeds fail, e.g. '10.0% (8/8 seeds fail)'."""
    if p is None:
        return "not run"
    fin = p.acc[np.isfinite(p.acc)]
    mean = f"{float(np.mean(fin)):.1f}%" if len(fin) else "every seed diverged"
    return f"{mean} ({int(p.failed.sum())}/{len(p.failed)} seeds fail)"


def _eps_tolerated(a: ModelAnalysis, method: str) -> str:
    """The largest median realised mean ‖ε‖ over training at a ρ where every seed of ``method`` trains."""
    v = [p.eps_mean for p in a.points(method) if p.trains and math.isfinite(p.eps_mean)]
    return fmt(max(v)) if v else "none"


def _reversed(claim: Claim, key: str) -> bool:
    """Whether the interval over seeds stored under ``key`` in the claim's values lies wholly below 0 (the opposite
    of what the claim says)."""
    iv = (claim.values or {}).get(key)
    hi = iv.get("hi") if isinstance(iv, dict) else None
    return isinstance(hi, (int, float)) and math.isfinite(hi) and hi < 0


def model_finding(a: ModelAnalysis, claims: Mapping[str, Claim]) -> str | None:
    """The finding of one model, or ``None`` when its robustness claims PASS or its precondition does not."""
    pre, c1, c2 = (claims.get(f"E7.{k}-{a.model}") for k in (0, 1, 2))
    if pre is None or c1 is None or c2 is None or pre.verdict != "PASS" or not a.seeds:
        return None
    if c1.verdict == "PASS" and c2.verdict == "PASS":
        return None
    reverses = _reversed(c1, "grid_steps") or _reversed(c2, "difference")
    g_first = float(np.median([a.sgd[s].g_first for s in a.seeds]))
    g_last = float(np.median([a.sgd[s].g_last for s in a.seeds]))
    tops = {m: {s: a.stable_top(m, s) for s in a.seeds} for m in METHODS}
    # the first grid ρ at which SAM fails on most seeds (else the top of the grid)
    k_fail = next(
        (k for k in range(len(a.grid)) if sum(tops["sam"][s] < k for s in a.seeds) * 2 > len(a.seeds)),
        len(a.grid) - 1,
    )
    head = (
        "the robustness claim reverses on this architecture: USAM keeps training at ρ where SAM fails"
        if reverses
        else "the robustness claim is not confirmed on this architecture"
    )
    eps_last = {m: a.point(m, max(0, _median_top(a, m))) for m in METHODS}
    return (
        f"{a.model}: {head} (E7.1 {c1.verdict}, E7.2 {c2.verdict}). Stable range in ρ, median over seeds "
        f"{a.seeds}: SAM up to ρ = {_median_rho(a, 'sam')}, USAM up to ρ = {_median_rho(a, 'usam')}. Mechanism: SGD's "
        f"mini-batch ‖g‖ falls {fmt(g_first / g_last)}× ({fmt(g_first)} → {fmt(g_last)}), so USAM's late ‖ε‖ = ρ‖g‖ "
        "is small: last-epoch ‖ε‖ at each method's last stable ρ: "
        + ", ".join(f"{m.upper()} {fmt(p.eps_last) if p else 'none'}" for m, p in eps_last.items())
        + f". At ρ = {fmt(a.grid[k_fail])}: SAM {_acc(a.point('sam', k_fail))}, USAM "
        f"{_acc(a.point('usam', k_fail))}, SGD {a.sgd_acc:.1f}%. Against the realised perturbation: every seed trains "
        f"up to a mean ‖ε‖ of {_eps_tolerated(a, 'sam')} with SAM and {_eps_tolerated(a, 'usam')} with USAM."
    )


def findings(an: Mapping[str, ModelAnalysis], claims: Sequence[Claim]) -> list[str]:
    """One finding per model whose robustness claims do not hold where the mechanism was at work."""
    by_id = {c.id: c for c in claims}
    return [f for a in an.values() if (f := model_finding(a, by_id)) is not None]
