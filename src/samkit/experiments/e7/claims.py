"""E7's claims, one function each, per model, from the analysis (:mod:`samkit.experiments.e7.analysis`).

Each claim's statistic is computed per seed (paired with SGD on that seed) and judged on its 90% Student-t interval
over the seeds (:mod:`samkit.experiments.stats`): PASS when the whole interval is on the claim's side of the
threshold, FAIL when it is all on the other side, INCONCLUSIVE when it straddles. E7.0 is the precondition: unless it
PASSes, E7.1–E7.4 are NOT EXERCISED (their numbers are still shown).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from samkit.experiments.base import Claim, fmt, make_claim
from samkit.experiments.e7.analysis import ModelAnalysis
from samkit.experiments.e7.config import METHODS, setting
from samkit.experiments.stats import SeedInterval, all_of, judge, seed_interval

_DATA = ["data/runs.csv", "data/curves.csv"]


def _interval(values: Mapping[int, float]) -> SeedInterval | None:
    """The interval over the seeds with a finite value (None when there is none)."""
    finite = {s: v for s, v in values.items() if math.isfinite(v)}
    return seed_interval(finite) if finite else None


def _trains_rule(config: Mapping[str, Any]) -> str:
    return (
        f"a run fails when it diverged or its test accuracy is more than {config['collapse_drop']:g} points below "
        "SGD's on the same seed; 90% t-interval of the mean over seeds: PASS if it lies wholly on the claim's side, "
        "FAIL if wholly on the other, else INCONCLUSIVE"
    )


def _claim(a: ModelAnalysis, config: Mapping[str, Any], k: int, **fields: Any) -> Claim:
    return make_claim(id=f"E7.{k}-{a.model}", setting=setting(config, a.model), data=_DATA, **fields)


def _per_seed(a: ModelAnalysis, f: Callable[[int], float]) -> dict[int, float]:
    return {s: float(f(s)) for s in a.seeds}


def _common_why(a: ModelAnalysis) -> list[str]:
    return [] if len(a.seeds) >= 2 else [f"{len(a.seeds)} seed(s) with an SGD reference: no interval"]


def precondition(a: ModelAnalysis, config: Mapping[str, Any]) -> Claim:
    """E7.0: USAM's epoch-mean ‖ε‖ = ρ‖g‖ varies ≥ ``min_dynamic_range``× over training, over its stable range."""
    need = float(config["min_dynamic_range"])
    logs = _per_seed(a, lambda s: math.log10(r) if (r := a.eps_range(s)) > 0 else float("nan"))
    iv = _interval(logs)
    why = _common_why(a) + (["USAM fails at the smallest ρ on every seed"] if iv is None else [])
    none = [s for s, v in logs.items() if not math.isfinite(v)]
    g = [a.sgd[s].g_first / a.sgd[s].g_last for s in a.seeds]
    measured = (
        "log10 of USAM's ‖ε‖ max/min (geometric mean over the ρ of its stable range, per seed): "
        + (iv.text() if iv else "none")
        + (f"; seeds without a stable range: {none}" if none else "")
        + (f"; SGD's ‖g‖ falls {fmt(min(g))}–{fmt(max(g))}× from the first to the last epoch" if g else "")
        + "".join(f"; {n}" for n in a.notes)
    )
    verdict = judge(iv, ">=", math.log10(need)) if iv else "FAIL"
    if verdict == "FAIL":  # the setting did not put the mechanism to work: not a verdict on the paper
        why.append(f"USAM's ‖ε‖ = ρ‖g‖ does not vary {need:g}× (‖g‖ does not decay enough)")
    return _claim(
        a,
        config,
        0,
        statement="Precondition: the mechanism is put to work — ‖g‖ decays during training, so USAM's "
        "perturbation ρ‖g‖ is large early and small late (SAM's stays ρ).",
        prediction=f"log10(USAM's ‖ε‖ max/min) ≥ {math.log10(need):g} (a {need:g}× range), per seed over the ρ up "
        "to its first failure",
        measured=measured,
        tolerance=f"{_trains_rule(config)}; unless this PASSes, E7.1–E7.4 of {a.model} are NOT EXERCISED",
        verdict=verdict,
        why=why,
        figure="norms.png",
        values={"log10_dynamic_range": iv.to_dict() if iv else None},
    )


def stable_range(a: ModelAnalysis, config: Mapping[str, Any], why: Sequence[str]) -> Claim:
    """E7.1: SAM's stable range in ρ reaches ≥ ``min_grid_steps`` grid steps beyond USAM's."""
    need = float(config["min_grid_steps"])
    tops = {m: {s: a.stable_top(m, s) for s in a.seeds} for m in METHODS}
    iv = _interval({s: tops["sam"][s] - tops["usam"][s] for s in a.seeds})

    def rho(k: int) -> str:
        return fmt(a.grid[k]) if k >= 0 else "none"

    per = "; ".join(
        f"{m.upper()} trains up to ρ = " + ", ".join(f"{rho(tops[m][s])}" for s in a.seeds) for m in METHODS
    )
    step = math.log10(a.grid[1] / a.grid[0])
    return _claim(
        a,
        config,
        1,
        statement="SAM is robust to ρ: it keeps training at ρ where USAM already fails — its stable range in ρ "
        "reaches further than USAM's.",
        prediction=f"SAM's largest ρ of its stable range − USAM's ≥ {need:g} grid step(s) ({need * step:.2g} decades)",
        measured=f"grid steps (SAM − USAM): {iv.text() if iv else 'none'}; per seed {a.seeds}: {per}",
        tolerance="stable range = the grid ρ up to the first failure on that seed; " + _trains_rule(config),
        verdict=judge(iv, ">=", need) if iv else "FAIL",
        why=list(why),
        figure="accuracy_vs_rho.png",
        values={"grid_steps": iv.to_dict() if iv else None, "stable_top": tops},
    )


def failures(a: ModelAnalysis, config: Mapping[str, Any], why: Sequence[str]) -> Claim:
    """E7.2: over ρ ≤ ``stable_rho``, USAM fails where SAM trains more often than the other way round."""
    cap = float(config["stable_rho"])
    d = {s: a.disagreement(s, cap) for s in a.seeds}
    iv = _interval({s: u - v for s, (u, v) in d.items()})
    n = len(a.low(cap))
    return _claim(
        a,
        config,
        2,
        statement=f"At ρ ≤ {cap:g}, USAM fails (diverges or collapses) where SAM trains; by the same rule, not the "
        "other way round.",
        prediction="per seed: (grid ρ where USAM fails and SAM trains) − (grid ρ where SAM fails and USAM trains) > 0",
        measured=f"{iv.text() if iv else 'none'}; per seed (USAM-only, SAM-only failures of {n} grid ρ): "
        + ", ".join(f"{s}: {u}/{v}" for s, (u, v) in d.items()),
        tolerance=_trains_rule(config),
        verdict=judge(iv, ">", 0.0) if iv else "FAIL",
        why=list(why),
        figure="accuracy_vs_rho.png",
        values={"difference": iv.to_dict() if iv else None, "per_seed": {str(s): list(v) for s, v in d.items()}},
    )


def flatness(a: ModelAnalysis, config: Mapping[str, Any], why: Sequence[str]) -> Claim:
    """E7.3: at matched training loss SAM ends flatter than SGD (paired by seed); USAM does not."""
    match, work, flat = float(config["loss_match"]), float(config["eps_at_work"]), float(config["flat_ratio"])
    ivs: dict[str, SeedInterval | None] = {}
    parts, verdicts = [], []
    for m, side in (("sam", "<="), ("usam", ">")):
        iv = ivs[m] = _interval(_per_seed(a, functools.partial(a.flatness, m, loss_match=match, at_work=work)))
        used = {s: a.flat_points(m, s, match, work) for s in a.seeds}
        at_work = sum(1 for ks, w in used.values() if w and ks)
        none = [s for s, (ks, _) in used.items() if not ks]
        verdicts.append(judge(iv, side, flat) if iv else "FAIL")
        parts.append(
            f"{m.upper()} λ/λ_SGD {iv.text() if iv else 'none (no run trains to a matched loss)'}; "
            f"perturbation at work on {at_work}/{len(a.seeds)} seeds"
            + (f"; no run trains to a matched loss on seeds {none}" if none and iv else "")
        )
    return _claim(
        a,
        config,
        3,
        statement="At matched training loss SAM ends flatter than SGD; USAM does not.",
        prediction=f"λ/λ_SGD ≤ {flat:g} for SAM and > {flat:g} for USAM (paired by seed)",
        measured="; ".join(parts),
        tolerance=f"λ = final top Hessian eigenvalue (Lanczos, {config['sharpness_batches']} × "
        f"{config['sharpness_batch_size']} training images); per seed the geometric mean of λ/λ_SGD over the ρ at "
        f"which the method trains to a loss ≤ {match:g} × SGD's with its perturbation at work (last-epoch ‖ε‖ ≥ "
        f"{work:g} × lr × ‖g‖, i.e. not below one SGD step), or, where it never is, over every ρ at which it trains "
        f"to a matched loss; both parts must PASS; " + _trains_rule(config),
        verdict=all_of(*verdicts),
        why=list(why),
        figure="sharpness.png",
        values={f"lam_ratio_{m}": iv.to_dict() if iv else None for m, iv in ivs.items()},
    )


def grid_top(a: ModelAnalysis, config: Mapping[str, Any], why: Sequence[str]) -> Claim:
    """E7.4: both methods fail on every seed at the top of the grid (so the grid reaches past both ranges)."""
    top = len(a.grid) - 1
    failed = {m: [s for s in a.seeds if not a.trains(m, top, s)] for m in METHODS}
    return _claim(
        a,
        config,
        4,
        statement=f"Both methods fail at the top of the grid (ρ = {fmt(a.grid[top])}): the grid reaches past both "
        "stable ranges.",
        prediction="every seed of SAM and of USAM diverges or collapses there",
        measured="; ".join(f"{m.upper()}: {len(failed[m])}/{len(a.seeds)} seeds failed" for m in METHODS),
        tolerance=_trains_rule(config).split(";")[0],
        passed=bool(a.seeds) and all(len(failed[m]) == len(a.seeds) for m in METHODS),
        why=list(why),
        figure="accuracy_vs_rho.png",
        values={"failed_seeds": failed},
    )


def model_claims(a: ModelAnalysis, config: Mapping[str, Any]) -> list[Claim]:
    """E7.0–E7.4 of one model."""
    pre = precondition(a, config)
    why = _common_why(a)
    if pre.verdict != "PASS":
        why.append(f"E7.0-{a.model} is {pre.verdict}")
    return [pre] + [f(a, config, why) for f in (stable_range, failures, flatness, grid_top)]
