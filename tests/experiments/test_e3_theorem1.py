"""E3 (Theorem 1 phase diagrams, SAM 2-cycle, strongly convex case) at its tiny preset: claims PASS, and FAIL on data that contradict them."""

from __future__ import annotations

from pathlib import Path

import pytest

from samkit.experiments import get
from samkit.experiments.base import Table
from samkit.experiments.runner import load_tables, read_json, run_experiment

NAME = "E3"
CLAIM_IDS = ["E3.1", "E3.2", "E3.3", "E3.4", "E3.5", "E3.6"]
#: claims whose verdict must flip to FAIL when USAM's rows are relabelled as SAM's and vice versa
SWAP_FAILS = ["E3.2", "E3.3", "E3.5", "E3.6"]
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


def test_gd_phase_labels_flipped_fail_e3_1(tiny):
    exp, _, cfg, data, _ = tiny
    bad = _edit(data, "phase", {"method": "gd"}, diverged=lambda r: not r["diverged"])
    assert _verdicts(exp.claims(cfg, bad))["E3.1"] == "FAIL"


def test_wrong_cycle_amplitude_fails_e3_4(tiny):
    exp, _, cfg, data, _ = tiny
    bad = _edit(data, "sam_cycle", {}, amplitude=lambda r: 1.01 * r["amplitude"])
    assert _verdicts(exp.claims(cfg, bad))["E3.4"] == "FAIL"
