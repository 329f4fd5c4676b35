"""E8's claims, one function each, from the analysis (:mod:`samkit.experiments.e8.analysis`).

Each claim's statistic is one number per seed — the worst run of that seed, |plateau/edge − 1| — judged on its 90%
Student-t interval over the seeds (:mod:`samkit.experiments.stats`). A USAM or SAM run that diverges or never
settles on a plateau while GD, at the same η and seed, reached its own edge contradicts the prediction ("it hovers
at its edge"): the claim FAILs. Where GD did not reach its edge the runs were too short to say anything: those
seeds are left out, and with none left the claim is NOT EXERCISED.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from samkit.experiments.base import Claim, fmt, make_claim
from samkit.experiments.e8.analysis import Analysis
from samkit.experiments.e8.config import setting, stability_edge
from samkit.experiments.stats import all_of, judge, seed_interval

_DATA = ["data/curves.csv", "data/runs.csv"]
_RULE = "90% t-interval over seeds of the per-seed worst run: PASS if it lies wholly within, FAIL if wholly outside"


def _claim(config: Mapping[str, Any], **fields: Any) -> Claim:
    return make_claim(setting=setting(config), figure="sharpness.png", data=_DATA, **fields)


def _list(runs: Mapping[tuple, Mapping[str, Any]], field: str) -> str:
    return "; ".join(
        f"η={e:g}" + (f" ρ={r:g}" if m != "gd" else "") + f" s{sd}: {fmt(s[field], 4)}"
        for (m, e, r, sd), s in sorted(runs.items())
    )


def _broken(runs: Mapping[tuple, Mapping[str, Any]], config: Mapping[str, Any]) -> list[str]:
    """The runs that diverged or never settled (last-third std/mean above ``stable_cv``)."""
    out = []
    for (m, e, r, sd), s in sorted(runs.items()):
        name = f"{m.upper()} (η={e:g}" + (f", ρ={r:g}" if m != "gd" else "") + f", seed {sd})"
        if s["diverged"]:
            out.append(f"{name} diverged")
        elif not s["stable"]:
            out.append(f"{name} did not settle (last-third std/mean {fmt(s['cv'])} > {config['stable_cv']:g})")
    return out


def _worst(a: Analysis, method: str, seeds: Sequence[int], field: str, target: float = 1.0) -> dict[int, float]:
    """Per seed, the largest |value − target| of ``field`` over that seed's runs of ``method``."""
    return {s: max(abs(v[field] - target) for v in a.runs(method, s).values()) for s in seeds}


def gd_control(a: Analysis, config: Mapping[str, Any]) -> Claim:
    """E8.1: GD's sharpness rises to 2/η and hovers there, at every η, on the seeds' interval."""
    tol = float(config["plateau_tol"])
    gd = a.runs("gd")
    broken = _broken(gd, config)
    seeds = [s for s in a.seeds if a.runs("gd", s)]
    iv = seed_interval(_worst(a, "gd", seeds, "gd_fraction")) if seeds and not broken else None
    measured = "plateau/(2/η): " + (_list(gd, "gd_fraction") or "no GD run")
    if iv is not None:
        measured += f"; worst |plateau/(2/η) − 1| per seed: {iv.text()}"
    if any(s["gd_fraction"] < 1.0 - tol for s in gd.values()):
        measured += "; below the band: the runs were too short for sharpening to reach the edge"
    if broken:
        measured += "; " + "; ".join(broken)
    return _claim(
        config,
        id="E8.1",
        statement="Control: full-batch GD's sharpness rises to its edge of stability 2/η and hovers there "
        "(Cohen et al. 2021).",
        prediction="plateau = 2/η at every η",
        measured=measured,
        tolerance=f"|plateau/(2/η) − 1| ≤ {tol:g}; a run that diverges or does not settle fails; {_RULE}",
        verdict="FAIL" if iv is None else judge(iv, "<=", tol),
        values={"worst": iv.to_dict() if iv else None},
    )


def _judged(a: Analysis, method: str, config: Mapping[str, Any]) -> tuple[list[int], list[str], dict, list[str], str]:
    """Of ``method``'s runs: the seeds on which GD reached its edge, why nothing can be judged (if so), those seeds'
    runs, the ones among them that diverged or never settled, and the seeds left out (as text)."""
    runs = a.runs(method)
    seeds = a.judged_seeds(method)
    why = [] if seeds else ["GD reached its edge on no seed (runs too short?)" if runs else f"no {method.upper()} run"]
    judged = {k: s for k, s in runs.items() if k[3] in seeds}
    left_out = [s for s in a.seeds if s not in seeds and a.runs(method, s)]
    note = f"; seeds {left_out} left out (GD did not reach its edge there)" if left_out else ""
    return seeds, why, judged, _broken(judged, config), note


def usam_edge(a: Analysis, config: Mapping[str, Any]) -> Claim:
    """E8.2: USAM's sharpness hovers at Theorem 1's λ*, well below GD's edge."""
    tol, frac = float(config["plateau_tol"]), float(config["max_edge_fraction"])
    usam = a.runs("usam")
    seeds, why, judged, broken, left_out = _judged(a, "usam", config)
    low = [
        f"USAM (η={k[1]:g}, ρ={k[2]:g}, seed {k[3]}) starts at λ0 = {fmt(s['lam0'])}, not below (1 − {tol:g}) λ*"
        for k, s in sorted(usam.items())
        if not s["lam0"] < (1.0 - tol) * s["edge"]
    ]
    why += low  # no approach from below: "hovering at λ*" could be a run that never moved
    iv = seed_interval(_worst(a, "usam", seeds, "paired")) if seeds and not broken else None
    preds = "; ".join(f"η={e:g} ρ={r:g}: {stability_edge(e, r):.3g}" for e, r in sorted({k[1:3] for k in usam}))
    measured = "plateau/λ*: " + (_list(judged, "ratio") or "none")
    measured += "; paired with GD on its seed, (plateau/λ*)/(GD's plateau/(2/η)): " + (
        _list(judged, "paired") or "none"
    )
    if iv is not None:
        measured += f"; worst |paired − 1| per seed: {iv.text()}"
    measured += "; plateau/(2/η): " + (_list(judged, "gd_fraction") or "none")
    if broken:
        measured += "; " + "; ".join(broken)
    measured += left_out
    return _claim(
        config,
        id="E8.2",
        statement="USAM's sharpness hovers at Theorem 1's threshold — the root λ* of η(λ + ρλ²) = 2 — not at GD's "
        f"edge (every λ* is ≤ {frac:g} × 2/η, checked when the config is made).",
        prediction=f"plateau = λ* = (−1 + √(1 + 8ρ/η))/(2ρ): {preds or 'no USAM run'}; relative to GD's plateau on "
        "the same seed (both hover slightly above their edge), plateau_USAM/plateau_GD = λ*/(2/η)",
        measured=measured,
        tolerance=f"|(plateau/λ*)/(GD's plateau/(2/η)) − 1| ≤ {tol:g}, paired by seed; a run that diverges or does not "
        f"settle while GD reached its edge fails; {_RULE}",
        verdict="FAIL" if iv is None else judge(iv, "<=", tol),
        why=why,
        values={"worst": iv.to_dict() if iv else None},
    )


def sam_edge(a: Analysis, config: Mapping[str, Any]) -> Claim:
    """E8.3: SAM's sharpness stays well below 2/η, at its ‖g_t‖-dependent edge."""
    sfrac, stol = float(config["sam_max_fraction"]), float(config["sam_edge_tol"])
    seeds, why, judged, broken, left_out = _judged(a, "sam", config)
    edge = frac = None
    if seeds and not broken:
        edge = seed_interval(_worst(a, "sam", seeds, "sam_edge_ratio"))
        frac = seed_interval({s: max(v["gd_fraction"] for v in a.runs("sam", s).values()) for s in seeds})
    verdict = all_of(judge(edge, "<=", stol), judge(frac, "<=", sfrac)) if edge and frac else "FAIL"
    measured = "plateau/(2/η): " + (_list(judged, "gd_fraction") or "none") + "; mean λ_t/edge_t: "
    measured += _list(judged, "sam_edge_ratio") or "none"
    if edge and frac:
        measured += f"; worst |mean λ_t/edge_t − 1| per seed: {edge.text()}; largest plateau/(2/η): {frac.text()}"
    if broken:
        measured += "; " + "; ".join(broken)
    measured += left_out
    return _claim(
        config,
        id="E8.3",
        statement="SAM's sharpness stays well below 2/η, at the ‖g_t‖-dependent edge λ(1 + ρλ/‖g_t‖) = 2/η "
        "(Long & Bartlett 2023).",
        prediction=f"plateau ≤ {sfrac:g} × 2/η; mean over the last third of λ_t / edge_t = 1, edge_t the root of "
        "λ(1 + ρλ/‖g_t‖) = 2/η with the full-batch ‖g_t‖ at that step",
        measured=measured,
        tolerance=f"|mean λ_t/edge_t − 1| ≤ {stol:g} and plateau/(2/η) ≤ {sfrac:g}, both on the seeds' interval; a "
        f"run that diverges or does not settle while GD reached its edge fails; {_RULE}",
        verdict=verdict,
        why=why,
        values={"worst_edge": edge.to_dict() if edge else None, "plateau_fraction": frac.to_dict() if frac else None},
    )


def claims(a: Analysis, config: Mapping[str, Any]) -> list[Claim]:
    """E8.1–E8.3."""
    return [gd_control(a, config), usam_edge(a, config), sam_edge(a, config)]
