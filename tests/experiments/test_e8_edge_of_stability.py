"""E8 (edge of stability in a deep network): the edge formula, the tiny preset on real Fashion-MNIST (PASS, claims
recomputed from the CSVs), must-FAIL and NOT-EXERCISED on edited data, and the preset validation."""

from __future__ import annotations

import math

import pytest

from samkit.dynamics import theory
from samkit.experiments import ConfigError, get
from samkit.experiments.base import Claim, Table
from samkit.experiments.e8 import stability_edge
from samkit.experiments.runner import run_experiment
from samkit.report import write_report

NAME = "E8"
CLAIMS = ["E8.1", "E8.2", "E8.3"]


# -- the edge -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("eta, rho", [(0.02, 0.005), (0.02, 0.01), (0.03, 0.01), (0.05, 0.02), (1e-3, 1e-6)])
def test_stability_edge_is_where_theorem_1s_usam_threshold_equals_eta(eta, rho):
    lam = stability_edge(eta, rho)
    # Theorem 1: USAM at curvature λ is stable iff η < 2/(λ + ρλ²); at λ* the threshold is exactly η
    assert float(theory.usam_threshold(lam, rho)) == pytest.approx(eta, rel=1e-12)
    assert lam == pytest.approx((-1.0 + math.sqrt(1.0 + 8.0 * rho / eta)) / (2.0 * rho), rel=1e-9)
    assert lam < 2.0 / eta


def test_stability_edge_closed_forms_and_bad_input():
    assert stability_edge(0.02, 0.0) == 100.0  # GD's edge 2/η
    assert stability_edge(0.02, 0.02) == 50.0  # 0.02·50² + 50 = 100 = 2/η
    assert stability_edge(0.02, 1e-12) == pytest.approx(100.0, rel=1e-9)  # no cancellation as ρ → 0
    with pytest.raises(ValueError, match="eta"):
        stability_edge(0.0, 0.01)
    with pytest.raises(ValueError, match="rho"):
        stability_edge(0.02, -0.01)


# -- presets and validation -----------------------------------------------------------------------------------------
def test_presets_quick_is_one_step_size_and_full_is_the_prototype_grid():
    e8 = get("E8")
    quick, full = e8.config("quick"), e8.config("full")
    assert quick["etas"] == [0.03] and quick["usam_rhos"] == [0.005, 0.01] and quick["sam_rhos"] == [0.01]
    assert quick["n_train"] == full["n_train"] == 1000 and quick["hidden"] == full["hidden"] == [128, 128]
    assert full["etas"] == [0.02, 0.03] and full["steps"] == [4000, 3000] and full["seeds"] == [0, 1, 2, 3, 4]
    usam = set(zip(full["usam_etas"], full["usam_rhos"]))
    assert usam == {(0.02, 0.005), (0.02, 0.01), (0.02, 0.02), (0.03, 0.005), (0.03, 0.01)}
    assert list(zip(full["sam_etas"], full["sam_rhos"])) == [(0.02, 0.01)]
    # per seed: a GD control at each η, every USAM (η, ρ), SAM at (0.02, 0.01)
    assert len(e8.units(full)) == 5 * ((1 + 3 + 1) + (1 + 2)) and len(e8.units(quick)) == 5 * 4
    methods = {(u.params["method"], u.params["eta"], u.params["rho"]) for u in e8.units(quick)}
    assert methods == {("gd", 0.03, 0.0), ("usam", 0.03, 0.005), ("usam", 0.03, 0.01), ("sam", 0.03, 0.01)}
    steps = {(u.params["method"], u.params["eta"]): u.params["steps"] for u in e8.units(full)}
    assert steps[("usam", 0.02)] == steps[("sam", 0.02)] == 4000 and steps[("usam", 0.03)] == 3000


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["usam_rhos=0.005,0.001"], r"\(η=0.03, ρ=0.001\).*too close to GD's edge"),  # λ* = 64.7 ≈ 2/η = 66.7
        (["usam_rhos=0.005,0.05"], r"\(η=0.03, ρ=0.05\).*no approach from below"),  # λ* = 29.7 < initial λ 34–40
        (["etas=0.03,0.02"], "steps must hold 2 values"),
        (["steps=250"], "at least 3 × eig_every"),
        (["sam_rhos=0"], "sam_rhos\\[0\\] must be a positive"),
        (["usam_rhos=0.01"], "usam_rhos must hold 2 values"),
        (["sam_etas=0.02"], "sam_etas must each be one of etas"),
        (["usam_rhos=0.01,0.01"], "the same"),
        (["usam_rhos=0.005,0.006"], r"closer than the plateau tolerance ±0.05 can tell apart"),  # 52.8 vs 51.0
        (["seeds=0,0"], "seeds must be distinct"),
    ],
)
def test_validation_refuses_runs_that_cannot_exercise_the_mechanism(overrides, match):
    with pytest.raises(ConfigError, match=match) as err:
        get("E8").config("quick", overrides)
    assert str(err.value).startswith("E8: ") and "\n" not in str(err.value)


def test_cli_prints_the_refused_rho_without_running(capsys, tmp_path):
    from samkit.cli import main

    code = main(
        ["run", "E8", "--preset", "quick", "--out", str(tmp_path), "--set", "usam_rhos=0.005,0.05", "--no-progress"]
    )
    err = capsys.readouterr().err
    assert code == 2 and "η=0.03, ρ=0.05" in err and "Traceback" not in err
    assert not (tmp_path / "E8").exists()


def test_missing_dataset_is_reported_before_any_unit(tmp_path, monkeypatch):
    from samkit.experiments.e8 import runs as e8_module

    e8 = get("E8")
    cfg = e8.config("tiny")
    monkeypatch.setattr(e8_module, "_DATA_CACHE", {})
    monkeypatch.setenv("SAMKIT_DATA_DIR", str(tmp_path))
    msg = e8.missing(cfg)
    assert msg and "Fashion-MNIST not found" in msg and str(tmp_path) in msg
    monkeypatch.delenv("SAMKIT_DATA_DIR")
    assert e8.missing(cfg) is None


@pytest.mark.parametrize("method", ["gd", "usam", "sam"])
def test_a_diverging_run_is_recorded_not_raised(method):
    e8 = get("E8")
    cfg = e8.config("tiny")
    params = {k: cfg[k] for k in ("dataset", "n_train", "hidden", "eig_every", "eig_tol", "blowup")}
    params.update(method=method, eta=1.0, rho=0.02, steps=200, seed=0)  # 2/η = 2, far below the initial λ ≈ 20
    r = e8.run_unit(params)
    assert r["diverged"] and 0 < r["diverged_step"] < 200
    assert r["step"] == [0] and math.isfinite(r["lam"][0])  # measured once before blowing up, then stopped


# -- the tiny preset on real data -------------------------------------------------------------------------------------
def test_tiny_preset_passes_on_real_data_and_claims_come_from_the_csvs(tiny, kit):
    exp, res, cfg, data, d = tiny
    assert kit.verdicts(res.claims) == {i: "PASS" for i in CLAIMS}
    for c in res.claims:
        assert c.exercised and c.measured and c.prediction and c.tolerance and c.experiment == "E8"
        assert all((d / f).is_file() for f in c.data) and "t-interval" in c.measured
    again = exp.claims(cfg, data)
    assert [(c.id, c.verdict, c.measured) for c in again] == [(c.id, c.verdict, c.measured) for c in res.claims]
    assert (d / "figures" / "sharpness.png").stat().st_size > 10_000
    assert len(data["runs"]) == len(exp.units(cfg)) and not data["runs"].col("diverged").astype(bool).any()
    assert {r["seed"] for r in data["runs"].rows} == {0, 1, 2, 3, 4}
    # the mechanism really ran: sharpness rose from λ0 to the plateau, and the USAM plateaus sit at λ*
    for (m, *_), s in exp.analysis(cfg, data).stats.items():
        if m != "sam":
            assert s["plateau"] > 1.15 * s["lam0"]
        if m == "usam":
            assert s["ratio"] == pytest.approx(1.0, abs=cfg["plateau_tol"])


def test_rerun_resumes_from_cached_units(tiny):
    exp, res, _, _, d = tiny
    seen: list[bool] = []
    again = run_experiment(exp, "tiny", d.parent, progress=False, on_unit=lambda k, cached: seen.append(cached))
    assert seen and all(seen) and again["claims"] == res["claims"]


def _scale(data, kit, where, factor):
    """λ of the matching runs scaled by ``factor`` after the first measurement (λ0 stays as measured)."""
    return kit.edit(data, "curves", where, lam=lambda r: factor * r["lam"] if r["step"] > 0 else r["lam"])


def test_usam_rows_labelled_sam_fail(tiny, kit):
    exp, _, cfg, data, _ = tiny
    got = kit.verdicts(exp.claims(cfg, kit.swap_methods(data)))
    assert got == {"E8.1": "PASS", "E8.2": "FAIL", "E8.3": "FAIL"}


@pytest.mark.parametrize("factor", [1.1, 0.9])
def test_a_usam_plateau_shifted_by_ten_percent_fails_e8_2(tiny, kit, factor):
    exp, _, cfg, data, _ = tiny
    got = kit.verdicts(exp.claims(cfg, _scale(data, kit, {"method": "usam", "rho": cfg["usam_rhos"][1]}, factor)))
    assert got == {"E8.1": "PASS", "E8.2": "FAIL", "E8.3": "PASS"}


def test_a_shift_on_one_seed_of_three_is_inconclusive(tiny, kit):
    # seed 0's USAM plateaus 8% high, the others as measured (≈ 1–3%): the interval of the worst deviation straddles 5%
    exp, _, cfg, data, _ = tiny
    claims = {c.id: c for c in exp.claims(cfg, _scale(data, kit, {"method": "usam", "seed": 0}, 1.08))}
    iv = claims["E8.2"].values["worst"]
    assert claims["E8.2"].verdict == "INCONCLUSIVE" and iv["lo"] < cfg["plateau_tol"] < iv["hi"]


def test_gd_plateau_above_its_edge_fails_the_control_and_the_paired_usam_claim(tiny, kit):
    # E8.2 compares USAM's plateau/λ* with GD's plateau/(2/η) on the same seed: a GD 10% high moves it too
    exp, _, cfg, data, _ = tiny
    got = kit.verdicts(exp.claims(cfg, _scale(data, kit, {"method": "gd"}, 1.1)))
    assert got == {"E8.1": "FAIL", "E8.2": "FAIL", "E8.3": "PASS"}


def test_gd_short_of_its_edge_fails_the_control_and_leaves_the_rest_not_exercised(tiny, kit):
    exp, _, cfg, data, _ = tiny
    claims = exp.claims(cfg, _scale(data, kit, {"method": "gd"}, 0.9))
    assert kit.verdicts(claims) == {"E8.1": "FAIL", "E8.2": "NOT EXERCISED", "E8.3": "NOT EXERCISED"}
    assert "too short" in claims[0].measured and "GD reached its edge on no seed" in claims[1].measured
    assert not any(c.to_dict()["passed"] for c in claims)


def test_gd_short_of_its_edge_on_one_seed_leaves_that_seed_out(tiny, kit):
    exp, _, cfg, data, _ = tiny
    claims = {c.id: c for c in exp.claims(cfg, _scale(data, kit, {"method": "gd", "seed": 1}, 0.9))}
    assert claims["E8.2"].verdict == "PASS" and claims["E8.2"].values["worst"]["n"] == 4
    assert "seeds [1] left out" in claims["E8.2"].measured


def test_sam_off_its_grad_norm_edge_fails_e8_3(tiny, kit):
    exp, _, cfg, data, _ = tiny
    bad = kit.edit(data, "curves", {"method": "sam"}, grad_norm=lambda r: 2.0 * r["grad_norm"])
    assert kit.verdicts(exp.claims(cfg, bad))["E8.3"] == "FAIL"
    assert kit.verdicts(exp.claims({**cfg, "sam_max_fraction": 0.2}, data))["E8.3"] == "FAIL"


@pytest.mark.parametrize("method, claim", [("usam", "E8.2"), ("sam", "E8.3")])
def test_a_run_that_diverges_while_gd_reached_its_edge_fails(tiny, kit, method, claim):
    # it contradicts "the sharpness hovers at its edge": a FAIL, not a precondition that was not met
    exp, _, cfg, data, _ = tiny
    bad = kit.edit(data, "runs", {"method": method, "seed": 2}, diverged=True)
    claims = {c.id: c for c in exp.claims(cfg, bad)}
    assert claims[claim].verdict == "FAIL" and "seed 2) diverged" in claims[claim].measured
    assert claims["E8.1"].verdict == "PASS"


def test_a_plateau_that_never_settles_fails(tiny, kit):
    exp, _, cfg, data, _ = tiny
    steps = cfg["steps"][0]
    wobble = kit.edit(
        data,
        "curves",
        {"method": "usam"},
        lam=lambda r: r["lam"] * (1.2 if r["step"] > 2 * steps / 3 and r["step"] % 80 == 0 else 1.0),
    )
    claims = {c.id: c for c in exp.claims(cfg, wobble)}
    assert claims["E8.2"].verdict == "FAIL" and "did not settle" in claims["E8.2"].measured


def test_usam_starting_above_lambda_star_is_not_exercised(tiny, kit):
    exp, _, cfg, data, _ = tiny
    rho = cfg["usam_rhos"][0]
    bad = kit.edit(data, "curves", {"method": "usam", "rho": rho, "step": 0}, lam=2.0 / cfg["etas"][0])
    claims = {c.id: c for c in exp.claims(cfg, bad)}
    assert claims["E8.2"].verdict == "NOT EXERCISED" and "not below (1 − 0.05) λ*" in claims["E8.2"].measured


def test_no_sam_run_is_not_exercised(tiny, kit):
    exp, _, cfg, data, _ = tiny
    no_sam = {k: Table([r for r in t.rows if r["method"] != "sam"]) for k, t in data.items()}
    claims = {c.id: c for c in exp.claims(cfg, no_sam)}
    assert claims["E8.3"].verdict == "NOT EXERCISED" and "no SAM run" in claims["E8.3"].measured
    assert claims["E8.2"].verdict == "PASS"


# -- the third verdict in the report ----------------------------------------------------------------------------------
def test_report_shows_not_exercised_apart(tmp_path):
    kw = dict(statement="s", setting="x", prediction="p", measured="m", tolerance="t", experiment="X")
    claims = [
        Claim(id="X.1", passed=True, **kw),
        Claim(id="X.2", passed=False, **kw),
        Claim(id="X.3", passed=True, exercised=False, **kw),
    ]
    assert [c.verdict for c in claims] == ["PASS", "FAIL", "NOT EXERCISED"]
    result = {
        "experiment": "X",
        "title": "t",
        "summary": "s",
        "preset": "tiny",
        "config_hash": "h",
        "provenance": {"samkit": "0", "torch": "0", "numpy": "0", "python": "3", "platform": "p"},
        "claims": [c.to_dict() for c in claims],
        "figures": [],
    }
    assert [c["passed"] for c in result["claims"]] == [True, False, False]
    write_report(tmp_path, [result])
    md = (tmp_path / "README.md").read_text()
    html = (tmp_path / "index.html").read_text()
    assert "**1 of 3 claims PASS.** (1 NOT EXERCISED" in md and "| **NOT EXERCISED** |" in md
    assert "class='NOT-EXERCISED'>NOT EXERCISED" in html and "(1 NOT EXERCISED" in html
