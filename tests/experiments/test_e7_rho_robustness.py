"""E7 (robustness to ρ near interpolation): presets and validation, the tiny preset on real Fashion-MNIST (every claim
PASS, recomputed from the CSVs), must-FAIL and NOT EXERCISED on edited tables, several models, figure legends."""

from __future__ import annotations

import math

import numpy as np
import pytest

from samkit.experiments import ConfigError, fmt, get
from samkit.experiments.base import Table
from samkit.experiments.runner import run_experiment

NAME = "E7"
CLAIMS = ["E7.0-mlp", "E7.1-mlp", "E7.2-mlp", "E7.3-mlp", "E7.4-mlp"]


# -- presets and validation -----------------------------------------------------------------------------------------
def test_quick_is_the_mlp_near_interpolation_and_full_has_three_architectures():
    e7 = get("E7")
    quick, full = e7.config("quick"), e7.config("full")
    assert quick["models"] == ["mlp"] and quick["subset"] == 1000 and quick["test_subset"] == 10000
    assert (quick["batch_size"], quick["epochs"], quick["lr"], quick["momentum"], quick["weight_decay"]) == (
        100, 100, 0.3, 0.0, 0.0)  # fmt: skip
    assert quick["schedule"] == "decay" and quick["decay_frac"] == 0.1 and quick["seeds"] == [0, 1]
    # ρ ∈ 10^{−3, −2.5, …, 0.5}: half-decade steps in quick, quarter-decade in full, over the same range
    for cfg, step in ((quick, 0.5), (full, 0.25)):
        rhos = sorted({u.params["rho"] for u in e7.units(cfg) if u.params["optimizer"] == "sam"})
        assert np.allclose(np.log10(rhos), np.arange(-3, 0.5 + 1e-9, step), atol=1e-5)
    assert full["models"] == ["mlp", "cnn", "resnet20"] and len(full["seeds"]) == 5
    assert 5000 <= full["subset"] <= 10000 and full["epochs"] >= 200
    # quick: SGD per seed of the grid and of the reference (6), SAM and USAM per (ρ, seed), and the lr sweep
    # {0.1, 0.6} at ρ = 0.1 (0.3 is on the grid)
    units = e7.units(quick)
    assert len(units) == 6 + 2 * 8 * 2 + 2 * 3 and len({u.key for u in units}) == len(units)
    sgd_seeds = {u.params["seed"] for u in units if u.params["optimizer"] == "sgd" and u.params["lr"] == 0.3}
    assert sgd_seeds == set(quick["seeds"]) | set(quick["reference_seeds"]) == {0, 1, 2, 3, 4, 5}
    sweep = {(u.params["optimizer"], u.params["lr"]) for u in units if u.params["lr"] != 0.3}
    assert sweep == {(m, lr) for m in ("sgd", "sam", "usam") for lr in (0.1, 0.6)}


def test_runs_train_on_the_cpu_unless_told_and_the_device_is_part_of_each_units_cache_key():
    import torch

    from samkit.experiments.runner import unit_hash

    e7 = get("E7")
    cpu = e7.config("tiny")
    assert all(cfg["device"] == "cpu" for cfg in (cpu, e7.config("quick"), e7.config("full")))
    gpu = e7.config("tiny", ["device=cuda"])
    a, b = e7.units(cpu), e7.units(gpu)
    assert [u.params["device"] for u in a] == ["cpu"] * len(a) and [u.params["device"] for u in b] == ["cuda"] * len(b)
    # CPU and CUDA results never share a cache entry (their numbers differ)
    assert {unit_hash(e7, u.params) for u in a}.isdisjoint(unit_hash(e7, u.params) for u in b)
    if not torch.cuda.is_available():  # asked for a GPU where there is none: the unit says so
        with pytest.raises(ValueError, match="no CUDA GPU is available"):
            e7.run_unit({**b[0].params, "dataset": "synthetic"})  # no data files needed


def test_the_full_presets_cnn_has_no_batchnorm_and_resnet20_has():
    import torch

    from samkit.models import build_model

    def has_bn(name):
        return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in build_model(name).modules())

    assert not has_bn("cnn") and not has_bn("mlp") and has_bn("resnet20")


@pytest.mark.parametrize(
    "override, message",
    [
        ("n_rho=1", "n_rho must be >= 2"),
        ("stable_rho=0.001", "stable_rho must lie in [rho_min, rho_max) = [0.01, 10)"),
        ("stable_rho=10", "stable_rho must lie in [rho_min, rho_max)"),
        ("sharpness_batch_size=1000", "sharpness_batches × sharpness_batch_size = 1000 must be <= subset = 150"),
        ("models=mlp,mlp", "models must be distinct"),
        ("models=vgg", "models[0] must be one of mlp, cnn, resnet20, got 'vgg'"),
        ("flat_ratio=1.5", "flat_ratio must be a number in (0, 1]"),
        ("decay_frac=0", "decay_frac must be a number in (0, 1]"),
    ],
)
def test_validation_refuses_nonsense_with_one_line(override, message):
    with pytest.raises(ConfigError) as err:
        get("E7").config("tiny", [override])
    assert str(err.value).startswith("E7: ") and message in str(err.value) and "\n" not in str(err.value)


def test_cli_prints_a_refused_config_without_running(capsys, tmp_path):
    from samkit.cli import main

    code = main(["run", "E7", "--preset", "tiny", "--out", str(tmp_path), "--set", "n_rho=1", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "n_rho must be >= 2" in err and "Traceback" not in err
    assert not (tmp_path / "E7").exists()


def test_missing_dataset_is_reported_before_any_unit(tmp_path, monkeypatch):
    import samkit.experiments.e7_rho_robustness as mod

    e7 = get("E7")
    cfg = e7.config("tiny")
    monkeypatch.setattr(mod, "_DATA_CACHE", {})
    monkeypatch.setenv("SAMKIT_DATA_DIR", str(tmp_path))
    msg = e7.missing(cfg)
    assert msg and "Fashion-MNIST not found" in msg and str(tmp_path) in msg and "\n" not in msg
    monkeypatch.delenv("SAMKIT_DATA_DIR")
    assert e7.missing(cfg) is None


# -- the tiny preset on real data -------------------------------------------------------------------------------------
# The tiny preset is one seed on 150 images near interpolation: its final models depend on the last bits of the
# arithmetic (another CPU's vector width, another torch), so the tests ask of it only what holds with a wide margin.
# E7.0 (‖ε‖ range > 40× against 10×), E7.1 (ratio > 100× against 10×), E7.2 and E7.4 (divergence, collapse) do;
# E7.3's flatness ratio does not (one seed: SAM's λ/λ_SGD was 0.49 on one machine and 0.83 on another), so its
# verdict here is only checked to follow from its numbers; its logic is pinned on edited tables below, and its
# evidence is the quick preset (two seed pairs, six SGD seeds: docs/e7-notes.md).
ROBUST = [c for c in CLAIMS if c != "E7.3-mlp"]


def _e73_follows_from_its_numbers(claim, cfg):
    sam, usam = claim.values["min_lam_ratio_sam"], claim.values["min_lam_ratio_usam"]
    assert claim.passed == (sam <= cfg["flat_ratio"] < usam), (sam, usam)


def test_tiny_preset_passes_on_real_data_and_claims_come_from_the_csvs(tiny, kit):
    exp, res, cfg, data, d = tiny
    got = kit.verdicts(res.claims)
    assert list(got) == CLAIMS and all(got[i] == "PASS" for i in ROBUST), got
    _e73_follows_from_its_numbers(next(c for c in res.claims if c.id == "E7.3-mlp"), cfg)
    for c in res.claims:
        assert c.exercised and c.measured and c.prediction and c.tolerance and c.experiment == "E7"
        assert all((d / f).is_file() for f in c.data) and (d / "figures" / c.figure).is_file()
    again = exp.claims(cfg, data)
    assert [(c.id, c.verdict, c.measured) for c in again] == [(c.id, c.verdict, c.measured) for c in res.claims]
    for f in ("accuracy_vs_rho", "perturbation", "norms", "sharpness", "lr_sweep"):
        assert (d / "figures" / f"{f}.png").stat().st_size > 10_000
    assert len(data["runs"]) == len(exp.units(cfg))
    # no wall-clock time (or anything else executor-dependent) in the tables
    assert all("second" not in col for t in data.values() for col in t.rows[0])
    # the mechanism really ran: SGD's ‖g‖ fell ≥ 10×, USAM's ‖ε‖ = ρ‖g‖ with it, SAM's ‖ε‖ stayed ρ
    curves = data["curves"]
    g = curves.where(method="sgd").col("grad_norm")
    assert g[0] / g[-1] >= 10
    v = res.claims[0].values
    assert v["dynamic_range"] >= cfg["min_dynamic_range"]
    sam = curves.where(method="sam", rho=0.1)
    assert np.allclose(sam.col("eps_norm"), 0.1, rtol=1e-5)
    usam = curves.where(method="usam", rho=0.1)
    assert np.allclose(usam.col("eps_norm"), 0.1 * usam.col("grad_norm"), rtol=1e-4)


def test_rerun_resumes_from_cached_units(tiny):
    exp, res, _, _, d = tiny
    seen: list[bool] = []
    again = run_experiment(exp, "tiny", d.parent, progress=False, on_unit=lambda k, cached: seen.append(cached))
    assert seen and all(seen) and again["claims"] == res["claims"]


# -- must FAIL / NOT EXERCISED on edited tables -----------------------------------------------------------------------
def _usam_as_sam(data, model="mlp"):
    """SAM's rows of ``model`` replaced by copies of USAM's rows labelled SAM (USAM's own rows kept)."""
    out = {}
    for name, t in data.items():
        if "method" not in (t.rows[0] if t.rows else {}):
            out[name] = t
            continue
        keep = [r for r in t.rows if not (r["model"] == model and r["method"] == "sam")]
        copies = [dict(r, method="sam") for r in t.rows if r["model"] == model and r["method"] == "usam"]
        out[name] = Table(keep + copies)
    return out


def test_usam_rows_labelled_sam_fail_e7_1_and_e7_3(tiny, kit):
    exp, _, cfg, data, _ = tiny
    got = kit.verdicts(exp.claims(cfg, _usam_as_sam(data)))
    assert got["E7.0-mlp"] == "PASS" and got["E7.1-mlp"] == "FAIL" and got["E7.3-mlp"] == "FAIL"


def test_swapped_labels_leave_the_mechanism_not_exercised(tiny, kit):
    # SAM's ‖ε‖ is ρ at every step: as "USAM" its dynamic range is 1, so nothing is tested
    exp, _, cfg, data, _ = tiny
    claims = exp.claims(cfg, kit.swap_methods(data))
    assert set(kit.verdicts(claims).values()) == {"NOT EXERCISED"}
    assert "varies only 1.0×" in claims[0].measured and not any(c.to_dict()["passed"] for c in claims)


def test_flattened_eps_range_is_not_exercised_and_still_shows_the_numbers(tiny, kit):
    exp, _, cfg, data, _ = tiny
    flat = kit.edit(data, "curves", {"method": "usam"}, eps_norm=lambda r: 0.05 * r["rho"])
    claims = exp.claims(cfg, flat)
    assert kit.verdicts(claims) == {i: "NOT EXERCISED" for i in CLAIMS}
    assert "max/min = 1.0" in claims[0].measured and "ratio = " in claims[1].measured
    assert all("not exercised: USAM's ‖ε‖ = ρ‖g‖ varies only 1.0×" in c.measured for c in claims)


def test_a_sam_divergence_at_rho_up_to_1_fails_e7_2(tiny, kit):
    exp, _, cfg, data, _ = tiny
    bad = kit.edit(data, "runs", {"method": "sam", "rho": 0.1}, diverged=True, test_acc=float("nan"))
    claims = {c.id: c for c in exp.claims(cfg, bad)}
    assert claims["E7.2-mlp"].verdict == "FAIL" and claims["E7.0-mlp"].verdict == "PASS"
    assert claims["E7.2-mlp"].measured.startswith("SAM: 1/3 diverged")


def test_usam_training_at_every_rho_up_to_stable_rho_fails_e7_2(tiny, kit):
    # at the grid's smallest ρ (0.01) USAM's perturbation is tiny and it trains, so up to there it shows no instability
    exp, _, cfg, data, _ = tiny
    claims = {c.id: c for c in exp.claims({**cfg, "stable_rho": cfg["rho_min"]}, data)}
    assert claims["E7.2-mlp"].verdict == "FAIL" and "USAM: 0/1 failed" in claims["E7.2-mlp"].measured


def test_e7_3_passes_when_sam_alone_ends_flatter_at_matched_loss(tiny, kit):
    exp, _, cfg, data, _ = tiny
    lam = float(np.median(data["runs"].where(method="sgd").col("top_eigenvalue")))
    loss = float(np.median(data["runs"].where(method="sgd").col("train_loss")))
    edited = kit.edit(data, "runs", {"method": "sam", "rho": cfg["rho_min"]}, top_eigenvalue=0.5 * lam, train_loss=loss)
    edited = kit.edit(edited, "runs", {"method": "usam"}, top_eigenvalue=lam)
    e73 = next(c for c in exp.claims(cfg, edited) if c.id == "E7.3-mlp")
    assert e73.verdict == "PASS" and e73.values["min_lam_ratio_sam"] == pytest.approx(0.5)


def test_sam_training_at_the_top_of_the_grid_fails_e7_4(tiny, kit):
    exp, _, cfg, data, _ = tiny
    acc = float(np.mean(data["runs"].where(method="sgd").col("test_acc")))
    top = kit.edit(data, "runs", {"method": "sam", "rho": cfg["rho_max"]}, diverged=False, test_acc=acc)
    assert kit.verdicts(exp.claims(cfg, top))["E7.4-mlp"] == "FAIL"


@pytest.mark.parametrize(("method", "factor"), [("sam", 1.0), ("usam", 0.5)])
def test_sharpness_against_sgds_decides_e7_3(tiny, kit, method, factor):
    exp, _, cfg, data, _ = tiny
    lam = float(np.median(data["runs"].where(method="sgd").col("top_eigenvalue")))
    bad = kit.edit(data, "runs", {"method": method}, top_eigenvalue=factor * lam)
    got = kit.verdicts(exp.claims(cfg, bad))
    assert got["E7.3-mlp"] == "FAIL" and got["E7.1-mlp"] == "PASS"


def test_the_sgd_reference_is_the_median_over_grid_and_reference_seeds(tiny, kit):
    """Two more SGD runs (reference seeds) at 10× λ move λ_SGD to 10×: both methods then look 10× flatter than SGD,
    so E7.3 (USAM must not be flatter) fails; the measured λ_SGD says so."""
    exp, _, cfg, data, _ = tiny
    sgd = data["runs"].where(method="sgd")
    lam = float(sgd.col("top_eigenvalue")[0])
    extra = [dict(sgd.rows[0], seed=s, top_eigenvalue=10 * lam) for s in (101, 102)]
    more = {**data, "runs": Table(data["runs"].rows + extra)}
    claims = exp.claims({**cfg, "reference_seeds": [101, 102]}, more)
    assert kit.verdicts(claims)["E7.3-mlp"] == "FAIL"
    e73 = next(c for c in claims if c.id == "E7.3-mlp")
    assert f"SGD: λ = {fmt(10 * lam)}" in e73.measured and "SGD's over 3 seeds" in e73.tolerance


def test_a_diverged_sgd_reference_leaves_everything_not_exercised(tiny, kit):
    exp, _, cfg, data, _ = tiny
    claims = exp.claims(cfg, kit.edit(data, "runs", {"method": "sgd"}, diverged=True, test_acc=float("nan")))
    assert set(kit.verdicts(claims).values()) == {"NOT EXERCISED"}
    assert "SGD diverged (1/1 seeds)" in claims[1].measured


# -- several models: one verdict per architecture ----------------------------------------------------------------------
def _two_models(data):
    """The tiny tables twice: as ``mlp`` and as ``cnn`` whose SAM rows are USAM's (a reversed claim)."""
    cnn = _usam_as_sam({k: Table([dict(r, model="cnn") for r in t.rows]) for k, t in data.items()}, "cnn")
    return {k: Table(t.rows + cnn[k].rows) for k, t in data.items()}


def test_claims_are_given_per_model_and_a_reversal_shows_in_its_own_verdicts(tiny, kit, tmp_path, monkeypatch):
    exp, _, cfg, data, _ = tiny
    cfg2 = {**cfg, "models": ["mlp", "cnn"]}
    got = kit.verdicts(exp.claims(cfg2, _two_models(data)))
    assert list(got) == CLAIMS + [c.replace("mlp", "cnn") for c in CLAIMS]
    alone = kit.verdicts(exp.claims(cfg, data))
    assert all(got[c] == "PASS" for c in ROBUST) and got["E7.3-mlp"] == alone["E7.3-mlp"]
    assert got["E7.0-cnn"] == "PASS" and got["E7.1-cnn"] == "FAIL" and got["E7.3-cnn"] == "FAIL"
    drawn, figs = _drawn(exp, cfg2, _two_models(data), tmp_path, monkeypatch)
    assert len(figs) == 6 and "E7.1-cnn" in figs[1].claims and "cnn SAM: trains at" in figs[0].caption
    for f in figs:  # a panel (or a row of panels) per model
        titles = drawn[f.file]["titles"]
        assert any(t.startswith("mlp") for t in titles) and any(t.startswith("cnn") for t in titles), f.file


# -- figures: legends show only what is drawn --------------------------------------------------------------------------
def _drawn(exp, cfg, data, tmp_path, monkeypatch):
    """``exp.figures`` with the saving replaced by a record of each figure's legend entries and panel titles."""
    import samkit.experiments.e7_rho_robustness as mod
    from samkit.experiments.plotting import plt

    seen: dict[str, dict[str, list[str]]] = {}

    def capture(fig, path):
        legend = [t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()]
        seen[path.name] = {"legend": legend, "titles": [ax.get_title() for ax in fig.axes]}
        plt.close(fig)
        return path.name

    monkeypatch.setattr(mod, "save_figure", capture)
    figs = exp.figures(cfg, data, tmp_path)
    return seen, figs


def test_legends_show_the_divergence_marker_only_when_one_is_drawn(tiny, kit, tmp_path, monkeypatch):
    exp, _, cfg, data, _ = tiny
    seen, figs = _drawn(exp, cfg, data, tmp_path, monkeypatch)
    assert any("diverged" in t for t in seen["accuracy_vs_rho.png"]["legend"])  # the tiny grid's ρ = 10 diverges
    assert not any("diverged" in t for t in seen["lr_sweep.png"]["legend"])  # the tiny sweep: the grid's lr only
    calm = kit.edit(data, "runs", {"diverged": True}, diverged=False, test_acc=0.1)
    seen, _ = _drawn(exp, cfg, calm, tmp_path, monkeypatch)
    assert not any("diverged" in t for t in seen["accuracy_vs_rho.png"]["legend"])
    # captions are computed from the data: the windows and r_max of this run
    r_max = exp.claims(cfg, data)[1].values["r_max_usam"]
    assert "r_max SAM 0.1" in figs[1].caption and f"USAM {r_max:.2e}"[:10] in figs[1].caption
    assert "trains at ρ ∈ [0.01, 0.1] (1.0 decades)" in figs[0].caption
    assert math.isfinite(r_max)


def test_the_hessian_spectrum_agrees_with_the_top_eigenvalue_of_the_same_model(tiny):
    """Two estimators on the same final model: SLQ's largest node and Lanczos's top eigenvalue (report-only figure)."""
    _, _, cfg, data, _ = tiny
    spec, runs = data["spectrum"], data["runs"]
    assert sorted(spec.unique("method")) == ["sam", "sgd", "usam"]
    for m in ("sgd", "sam", "usam"):
        rows = spec.where(method=m)
        key = {k: rows.first(k) for k in ("model", "lr", "rho", "seed")}
        lam = runs.where(method=m, **key).first("top_eigenvalue")
        assert abs(rows.col("node").max() - lam) <= 0.01 * lam, m
        for probe in rows.unique("probe"):
            assert abs(rows.where(probe=probe).col("weight").sum() - 1.0) < 1e-9
        assert len(rows.unique("probe")) == cfg["density_probes"]
