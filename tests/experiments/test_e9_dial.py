"""E9 (normalization as a dial): the tiny preset on real data PASSes with claims recomputed from the CSVs; every claim
FAILs on contrary data (a wrong λ-dependence, SAM relabelled as USAM, a tie), is NOT EXERCISED where its mechanism
did not run, and the preset validation refuses settings that could not show what the claims say."""

from __future__ import annotations

import math

import pytest

from samkit.experiments import ConfigError, get
from samkit.experiments.base import Table

NAME = "E9"
CLAIMS = ["E9.1", "E9.2", "E9.3", "E9.4", "E9.5"]


def _relabel(data, table, mapping):
    """``table`` with its λ values renamed by ``mapping`` (e.g. {0.0: 1.0, 1.0: 0.0} swaps USAM and SAM)."""
    out = dict(data)
    rows = []
    for row in data[table].rows:
        row = dict(row)
        if row.get("method", "unified") == "unified" and row["lam"] in mapping:
            row["lam"] = mapping[row["lam"]]
        rows.append(row)
    out[table] = Table(rows)
    return out


# -- the tiny preset on real data -------------------------------------------------------------------------------------
def test_tiny_preset_passes_and_claims_come_from_the_csvs(tiny, kit):
    exp, res, cfg, data, d = tiny
    assert kit.verdicts(res.claims) == {i: "PASS" for i in CLAIMS}
    again = exp.claims(cfg, data)
    assert [(c.id, c.verdict, c.measured) for c in again] == [(c.id, c.verdict, c.measured) for c in res.claims]
    for c in res.claims:
        assert c.exercised and c.prediction and c.tolerance and all((d / f).is_file() for f in c.data)
    for f in ("phase_diagrams", "cycle_amplitude", "factorization_boundary", "plateau"):
        assert (d / "figures" / f"{f}.png").stat().st_size > 10_000
    # the mechanism really ran: every unified run's sharpness rose to a plateau at its own edge, and they differ
    a = exp.analysis(cfg, data)
    dial = [a.dial(s) for s in a.seeds]
    assert all(r["plateau"] > 1.1 * r["lam0"] and abs(r["edge_ratio"] - 1) < cfg["edge_tol"] for d_ in dial for r in d_)
    assert all(d_[0]["plateau"] > 1.2 * d_[-1]["plateau"] for d_ in dial)  # λ = 0 vs λ = 1: far apart
    assert all(a.gd_reached(s) for s in a.seeds)


def test_units_cover_every_part_and_the_gd_control_runs_longer():
    e9 = get("E9")
    cfg = e9.config("quick")
    keys = [u.key for u in e9.units(cfg)]
    assert sum(k.startswith("quadratic-") for k in keys) == len(cfg["lams"])
    assert sum(k.startswith("factorization-") for k in keys) == len(cfg["fact_lams"])
    net = [u.params for u in e9.units(cfg) if u.params["kind"] == "net"]
    assert len(net) == len(cfg["seeds"]) * (1 + len(cfg["net_lams"]))
    assert {p["steps"] for p in net if p["method"] == "gd"} == {cfg["gd_steps"]} and cfg["gd_steps"] > cfg["net_steps"]
    assert {(p["lam"], p["rho"]) for p in net if p["method"] == "unified"} == {(v, 0.005) for v in cfg["net_lams"]}


# -- E9.1: the phase diagrams ---------------------------------------------------------------------------------------
def test_usams_labels_at_every_lambda_fail_the_phase_claim(tiny, kit):
    # a wrong λ-dependence: the dial does nothing (every λ diverges where USAM does)
    exp, _, cfg, data, _ = tiny
    usam = {(r["eta"], r["rho"]): r["diverged"] for r in data["phase"].rows if r["lam"] == 0.0}
    bad = kit.edit(data, "phase", {}, diverged=lambda r: usam[(r["eta"], r["rho"])])
    claims = {c.id: c for c in exp.claims(cfg, bad)}
    assert claims["E9.1"].verdict == "FAIL" and "λ=0: " in claims["E9.1"].measured


def test_sam_relabelled_as_usam_fails_the_phase_claim(tiny, kit):
    exp, _, cfg, data, _ = tiny
    assert kit.verdicts(exp.claims(cfg, _relabel(data, "phase", {0.0: 1.0, 1.0: 0.0})))["E9.1"] == "FAIL"


def test_a_grid_that_never_crosses_the_threshold_is_not_exercised(tiny, kit):
    exp, _, cfg, data, _ = tiny
    few = dict(data)
    few["phase"] = Table([r for r in data["phase"].rows if r["eta"] < 0.01])  # all stable at small ρ... or not
    few["phase"] = Table([r for r in few["phase"].rows if r["rho"] < 0.01])
    claim = {c.id: c for c in exp.claims(cfg, few)}["E9.1"]
    assert claim.verdict == "NOT EXERCISED" and "does not cross the threshold" in claim.measured


# -- E9.2: the 2-cycle ----------------------------------------------------------------------------------------------
def test_an_amplitude_off_by_a_millionth_fails_and_usams_zero_is_not_judged(tiny, kit):
    exp, _, cfg, data, _ = tiny
    off = kit.edit(data, "cycle", {"lam": 0.5}, amplitude=lambda r: r["amplitude"] * (1 + 3e-6))
    assert kit.verdicts(exp.claims(cfg, off))["E9.2"] == "FAIL"
    # λ = 0 converges to the minimizer (a = 0): no relative error to take, so its rows are not part of the claim
    zero = kit.edit(data, "cycle", {"lam": 0.0}, amplitude=123.0)
    assert kit.verdicts(exp.claims(cfg, zero))["E9.2"] == "PASS"


# -- E9.3: the factorization boundary -------------------------------------------------------------------------------
def test_a_boundary_that_does_not_move_with_lambda_fails(tiny, kit):
    exp, _, cfg, data, _ = tiny
    ref = {r["eta"]: r["rho_star"] for r in data["factorization"].rows if r["lam"] == 0.0}
    bad = kit.edit(data, "factorization", {"lam": 0.5}, rho_star=lambda r: ref[r["eta"]])
    claim = {c.id: c for c in exp.claims(cfg, bad)}["E9.3"]
    assert claim.verdict == "FAIL" and "(1−λ)ρ*/ρ*(0) = 0.5" in claim.measured


def test_a_boundary_moving_as_one_over_one_minus_lambda_squared_fails(tiny, kit):
    exp, _, cfg, data, _ = tiny
    ref = {r["eta"]: r["rho_star"] for r in data["factorization"].rows if r["lam"] == 0.0}
    bad = kit.edit(data, "factorization", {"lam": 0.5}, rho_star=lambda r: ref[r["eta"]] / 0.25)
    assert kit.verdicts(exp.claims(cfg, bad))["E9.3"] == "FAIL"


@pytest.mark.parametrize(
    "where, changes, why",
    [
        ({"lam": 1.0}, {"diverged_at_sam_rho": True}, "diverged at ρ = 1"),  # SAM diverging at ρ = O(1): Theorem 2
        ({"lam": 0.0}, {"rho_star": 1.0}, "outside Theorem 2's"),  # SAM relabelled as USAM: no ρ ≈ η boundary
        ({"lam": 0.5}, {"bracketed": False}, "no boundary in"),
    ],
)
def test_factorization_contrary_rows_fail(tiny, kit, where, changes, why):
    exp, _, cfg, data, _ = tiny
    claim = {c.id: c for c in exp.claims(cfg, kit.edit(data, "factorization", where, **changes))}["E9.3"]
    assert claim.verdict == "FAIL" and why in claim.measured


def test_sam_relabelled_as_usam_in_the_factorization_fails(tiny, kit):
    exp, _, cfg, data, _ = tiny
    swapped = _relabel(data, "factorization", {0.0: 1.0, 1.0: 0.0})
    assert kit.verdicts(exp.claims(cfg, swapped))["E9.3"] == "FAIL"


# -- E9.4 / E9.5: the deep net --------------------------------------------------------------------------------------
def _net_swap(data, mapping):
    return _relabel(_relabel(data, "net_runs", mapping), "net_curves", mapping)


def test_sam_relabelled_as_usam_fails_both_net_claims(tiny, kit):
    exp, _, cfg, data, _ = tiny
    got = kit.verdicts(exp.claims(cfg, _net_swap(data, {0.0: 1.0, 1.0: 0.0})))
    assert got["E9.4"] == "FAIL" and got["E9.5"] == "FAIL"


def test_a_tie_along_the_dial_fails_e9_5(tiny, kit):
    # every λ's sharpness curve replaced by λ = 0.5's: equal plateaus, the smallest fall is exactly 0
    exp, _, cfg, data, _ = tiny
    mid = {(r["seed"], r["step"]): r["sharpness"] for r in data["net_curves"].rows if r["lam"] == 0.5}
    tie = kit.edit(data, "net_curves", {"method": "unified"}, sharpness=lambda r: mid[(r["seed"], r["step"])])
    claims = {c.id: c for c in exp.claims(cfg, tie)}
    assert claims["E9.5"].verdict == "FAIL" and claims["E9.5"].values["smallest_fall"]["hi"] <= 0.0
    assert claims["E9.4"].verdict == "FAIL"  # and λ = 0, 1 are then far from their edges


def _scale(data, kit, where, factor):
    return kit.edit(
        data, "net_curves", where, sharpness=lambda r: factor * r["sharpness"] if r["step"] > 0 else r["sharpness"]
    )


@pytest.mark.parametrize("factor", [1.12, 0.88])
def test_one_lambda_off_its_edge_on_every_seed_fails_e9_4(tiny, kit, factor):
    exp, _, cfg, data, _ = tiny
    got = kit.verdicts(exp.claims(cfg, _scale(data, kit, {"method": "unified", "lam": 0.5}, factor)))
    assert got["E9.4"] == "FAIL"


def test_one_seed_off_its_edge_is_inconclusive(tiny, kit):
    exp, _, cfg, data, _ = tiny
    claims = {c.id: c for c in exp.claims(cfg, _scale(data, kit, {"method": "unified", "lam": 1.0, "seed": 0}, 1.09))}
    iv = claims["E9.4"].values["worst"]
    assert claims["E9.4"].verdict == "INCONCLUSIVE" and iv["lo"] < cfg["edge_tol"] < iv["hi"]


def test_a_diverged_run_fails_e9_4(tiny, kit):
    exp, _, cfg, data, _ = tiny
    bad = kit.edit(data, "net_runs", {"method": "unified", "lam": 0.5, "seed": 1}, diverged=True)
    claims = {c.id: c for c in exp.claims(cfg, bad)}
    assert claims["E9.4"].verdict == "FAIL" and "λ=0.5 seed 1 diverged" in claims["E9.4"].measured


def test_gd_short_of_its_edge_leaves_the_net_claims_not_exercised(tiny, kit):
    exp, _, cfg, data, _ = tiny
    short = _scale(data, kit, {"method": "gd"}, 0.85)
    claims = {c.id: c for c in exp.claims(cfg, short)}
    assert claims["E9.4"].verdict == claims["E9.5"].verdict == "NOT EXERCISED"
    assert "GD did not reach its edge" in claims["E9.4"].measured
    one = {c.id: c for c in exp.claims(cfg, _scale(data, kit, {"method": "gd", "seed": 2}, 0.85))}
    assert one["E9.4"].verdict == "PASS" and one["E9.4"].values["worst"]["n"] == 2


def test_a_gradient_norm_above_one_leaves_e9_5_not_exercised(tiny, kit):
    # there the derivation predicts the edge to rise in λ: "falling" is not the prediction to test
    exp, _, cfg, data, _ = tiny
    big = kit.edit(data, "net_curves", {"method": "unified"}, grad_norm=lambda r: 10 * r["grad_norm"])
    claims = {c.id: c for c in exp.claims(cfg, big)}
    assert claims["E9.5"].verdict == "NOT EXERCISED" and "‖g_t‖ ≥ 1" in claims["E9.5"].measured
    assert claims["E9.4"].verdict == "FAIL"  # the edges move with ‖g_t‖, the plateaus did not


def test_a_run_that_never_moved_leaves_its_seed_out(tiny, kit):
    exp, _, cfg, data, _ = tiny
    # seed 0's λ = 1 run starts at its plateau: "hovering at the edge" could be a run that never moved
    a = exp.analysis(cfg, data)
    plateau = a.net[("unified", 1.0, 0)]["plateau"]
    flat = kit.edit(data, "net_curves", {"method": "unified", "lam": 1.0, "seed": 0, "step": 0}, sharpness=plateau)
    claim = {c.id: c for c in exp.claims(cfg, flat)}["E9.4"]
    assert claim.verdict == "PASS" and claim.values["worst"]["n"] == 2 and "no approach to judge" in claim.measured


# -- presets and validation -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "overrides, match",
    [
        (["fact_lams=0.5,1"], "must include 0"),
        (["lams=0.5,0.25"], "distinct and ascending"),
        (["net_lams=0.5"], "at least two values"),
        (["net_rho=0.0005"], "too close to GD's edge"),  # λ* = 47.4 > 0.85 × 50
        (["steps=300"], "cannot show divergence just outside the band"),
        (["cycle_etas=0.25"], "nothing to check"),  # above 2/β = 0.2 at every λ
        (["gd_steps=50"], "gd_steps must be at least 3 × eig_every"),
        (["bisect_rho_min=2"], "bisect_rho_min must be < bisect_rho_max"),
        (["lams=0,1.5"], "lams"),
        (["fact_lams=0,0.5,0.95"], "cannot bracket the boundary at λ = 0.95"),  # ρ* ≈ 1.07 × 0.05/0.05 > 1
    ],
)
def test_settings_that_could_not_show_the_claims_are_refused(overrides, match):
    e9 = get("E9")
    with pytest.raises(ConfigError, match=match):
        e9.config("quick", overrides)


def test_band_and_steps_rule_is_the_growth_of_the_top_mode():
    # at η = (1 + band) × threshold the top mode grows by 1 + 2·band per step: from x0's top coordinate 1 to 1e12
    cfg = get("E9").config("quick")
    need = math.log(cfg["blowup"]) / math.log(1 + 2 * cfg["band"])
    assert cfg["steps"] >= need
    get("E9").config("quick", [f"steps={math.ceil(need)}"])
    with pytest.raises(ConfigError):
        get("E9").config("quick", [f"steps={math.floor(need) - 1}"])
