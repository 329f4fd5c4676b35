"""E2 (matrix sensing near a minimum) at its tiny preset: claims PASS, and FAIL on data that contradict them."""

from __future__ import annotations

from pathlib import Path

import pytest

from samkit.experiments import get
from samkit.experiments.base import Table
from samkit.experiments.runner import load_tables, read_json, run_experiment

NAME = "E2"
CLAIM_IDS = ["E2.1", "E2.2", "E2.3"]
#: claims whose verdict must flip to FAIL when USAM's rows are relabelled as SAM's and vice versa
SWAP_FAILS = ["E2.1", "E2.2", "E2.3"]
_SWAP = {"sam": "usam", "usam": "sam"}


def _swap_methods(data: dict[str, Table]) -> dict[str, Table]:
    """Every table with SAM and USAM rows relabelled as each other (USAM results fed where SAM's are expected)."""
    out = {}
    for name, table in data.items():
        rows = []
        for row in table.rows:
            row = dict(row)
            for col in ("method", "method_a", "method_b"):
                if row.get(col) in _SWAP:
                    row[col] = _SWAP[row[col]]
            rows.append(row)
        out[name] = Table(rows)
    return out


def _verdicts(claims) -> dict[str, str]:
    return {c.id: c.verdict for c in claims}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The experiment run once at its tiny preset: (experiment, result, config, tables read back from disk)."""
    exp = get(NAME)
    out = tmp_path_factory.mktemp(NAME.lower())
    res = run_experiment(exp, "tiny", out, progress=False)
    d = Path(out) / NAME
    return exp, res, read_json(d / "config.json")["config"], load_tables(d), d


def test_tiny_preset_every_claim_passes_with_its_files(tiny):
    exp, res, cfg, data, d = tiny
    assert _verdicts(res.claims) == {i: "PASS" for i in CLAIM_IDS}
    for c in res.claims:
        assert c.measured and c.prediction and c.tolerance and c.experiment == NAME
        assert all((d / f).is_file() for f in c.data), c.data
    for f in res.figures:
        assert (d / "figures" / f.file).stat().st_size > 10_000
        assert f.caption and set(f.claims) <= set(CLAIM_IDS)
    # the claims are a function of the CSV files on disk: recomputing them gives the same verdicts and numbers
    again = exp.claims(cfg, data)
    assert [(c.id, c.verdict, c.measured) for c in again] == [(c.id, c.verdict, c.measured) for c in res.claims]


def test_usam_results_fed_as_sam_fail(tiny):
    exp, _, cfg, data, _ = tiny
    got = _verdicts(exp.claims(cfg, _swap_methods(data)))
    assert {i: got[i] for i in SWAP_FAILS} == {i: "FAIL" for i in SWAP_FAILS}


def _edit(data: dict[str, Table], table: str, where: dict, **changes) -> dict[str, Table]:
    """A copy of ``data`` where the rows of ``table`` matching ``where`` get ``changes`` (values or functions of the row)."""
    out = dict(data)
    rows = []
    for row in data[table].rows:
        row = dict(row)
        if all(row.get(k) == v for k, v in where.items()):
            row.update({k: (v(row) if callable(v) else v) for k, v in changes.items()})
        rows.append(row)
    out[table] = Table(rows)
    return out


def test_tiny_values_are_in_the_calibrated_regime(tiny):
    _, res, cfg, data, _ = tiny
    e = data["endpoints"]
    assert e.first("loss_warm") < 1e-6  # the start is (close to) a global minimum
    assert e.where(method="gd").first("moved") < 0.01 * e.where(method="sam").col("moved").min()
    assert (e.where(method="sam").col("moved") > 0.3).all()
    c = {c.id: c for c in res.claims}
    assert c["E2.3"].values["max_distance"] <= 0.5 * c["E2.3"].values["min_moved"]


def test_gd_moving_fails_e2_1_and_raises_the_bar_of_e2_2(tiny):
    exp, _, cfg, data, _ = tiny
    sam_moved = float(data["endpoints"].where(method="sam").col("moved").min())
    bad = _edit(data, "endpoints", {"method": "gd"}, moved=sam_moved)  # GD moved as much as SAM
    got = _verdicts(exp.claims(cfg, bad))
    assert got["E2.1"] == "FAIL" and got["E2.2"] == "FAIL"


def test_sam_not_at_a_minimum_or_not_flatter_fails_e2_2(tiny):
    exp, _, cfg, data, _ = tiny
    assert _verdicts(exp.claims(cfg, _edit(data, "endpoints", {"method": "sam"}, loss_polished=1e-2)))["E2.2"] == "FAIL"
    sh = data["endpoints"].first("sharpness_warm")
    assert _verdicts(exp.claims(cfg, _edit(data, "endpoints", {"method": "sam"}, sharpness=sh)))["E2.2"] == "FAIL"


def test_sam_endpoints_far_apart_fail_e2_3(tiny):
    exp, _, cfg, data, _ = tiny
    mv = float(data["endpoints"].where(method="sam").col("moved").min())
    far = _edit(data, "pairwise_distance", {"method_a": "sam", "method_b": "sam"}, distance=0.6 * mv)
    assert _verdicts(exp.claims(cfg, far))["E2.3"] == "FAIL"
    rows = data["endpoints"].where(method="sam").rows
    diff = _edit(data, "endpoints", {"method": "sam", "rho": rows[0]["rho"]}, sharpness=lambda r: 1.05 * r["sharpness"])
    assert _verdicts(exp.claims(cfg, diff))["E2.3"] == "FAIL"


def test_unstable_usam_radius_is_reported_against_theorem_1(tiny):
    _, res, cfg, _, _ = tiny
    c = {c.id: c for c in res.claims}["E2.1"]
    assert all(cfg["eta"] < t for t in c.values["usam_threshold"])  # the tiny USAM radii are in USAM's stable range
    assert "2/(λ+ρλ²)" in c.setting
