"""Results that cannot be edited into a PASS: ``config.json`` is re-derived from its preset and overrides through
the experiment's schema on every read (an edited threshold makes ``samkit report`` refuse the folder, exit 3, one
line naming the file), and every unit file carries the sha256 of its result (an edited unit is recomputed, and
the run says so). Every test edits real files of a real run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from report_toys import registered

from samkit.cli import main
from samkit.experiments.base import stable_hash
from samkit.report import collect

RUN = ["--preset", "tiny", "--no-progress", "--jobs", "1"]


@pytest.fixture(autouse=True)
def _toys():
    with registered():
        yield


def _run(out: Path, *sets: str) -> int:
    return main(["run", "JUDGED", "--out", str(out), *RUN, *[a for s in sets for a in ("--set", s)]])


def _edit_json(path: Path, change) -> None:
    obj = json.loads(path.read_text())
    change(obj)
    path.write_text(json.dumps(obj))


def test_a_threshold_edited_into_config_json_is_refused(tmp_path, capsys):
    assert _run(tmp_path, "fail=true") == 1  # J.2 FAILs
    cfg = tmp_path / "JUDGED" / "config.json"

    def flip(obj):
        obj["config"]["fail"] = False
        obj["config_hash"] = stable_hash(obj["config"])  # even with a matching hash

    _edit_json(cfg, flip)
    capsys.readouterr()
    assert main(["report", str(tmp_path)]) == 3
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line]
    assert len(lines) == 1 and str(cfg) in lines[0] and "was edited" in lines[0] and "fail differ" in lines[0]
    assert "Traceback" not in err
    results, problems = collect(tmp_path)
    assert results == [] and problems[0].kind == "damaged"
    page = (tmp_path / "index.html").read_text()
    assert "0 of 0 claims PASS" in page and "id='JUDGED-J.2'" not in page  # neither the PASS nor the old FAIL
    claims = json.loads((tmp_path / "claims.json").read_text())
    assert not claims["all_pass"] and claims["claims"] == []


def test_a_preset_or_override_edited_into_config_json_is_refused(tmp_path, capsys):
    assert _run(tmp_path) == 0
    cfg = tmp_path / "JUDGED" / "config.json"
    _edit_json(cfg, lambda obj: obj.update(overrides=["fail=nonsense"]))
    assert main(["report", str(tmp_path)]) == 3
    assert "its preset and overrides give no valid config" in capsys.readouterr().err


def test_an_honest_override_is_accepted_and_shown(tmp_path):
    assert _run(tmp_path, "fail=true") == 1
    assert main(["report", str(tmp_path)]) == 1  # re-derived from (tiny, ["fail=true"]): the same config
    page = (tmp_path / "index.html").read_text()
    assert "fail=true" in page and "id='JUDGED-J.2'" in page


def test_an_edited_unit_result_is_recomputed_and_said(tmp_path, capsys):
    assert _run(tmp_path) == 0
    unit = next((tmp_path / "JUDGED" / "units").glob("x2-*.json"))
    _edit_json(unit, lambda obj: obj["result"].update(y=-4.0))  # would make J.1 ("squares are non-negative") FAIL
    capsys.readouterr()
    assert _run(tmp_path) == 0
    err = capsys.readouterr().err
    assert f"recomputing unit x2: {str(unit)!r}: its result does not match the sha256 recorded with it" in err
    squares = (tmp_path / "JUDGED" / "data" / "squares.csv").read_text()
    assert "-4" not in squares and "4.0" in squares
    assert json.loads(unit.read_text())["result"] == {"y": 4.0}  # rewritten by the recomputation


def test_a_unit_file_without_a_checksum_is_recomputed(tmp_path, capsys):
    assert _run(tmp_path) == 0
    for unit in (tmp_path / "JUDGED" / "units").glob("*.json"):
        _edit_json(unit, lambda obj: obj.pop("result_sha256"))
    seen = []
    from samkit.experiments import get
    from samkit.experiments.runner import run_experiment

    run_experiment(get("JUDGED"), "tiny", tmp_path, progress=False, on_unit=lambda k, cached: seen.append(cached))
    assert seen == [False, False, False]


def test_a_stale_result_json_is_rejudged_by_report(tmp_path):
    # result.json is a product, not a source: `samkit report` recomputes it from the verified config and data
    assert _run(tmp_path, "fail=true") == 1
    res = tmp_path / "JUDGED" / "result.json"
    _edit_json(res, lambda obj: [c.update(verdict="PASS", passed=True) for c in obj["claims"]])
    assert main(["report", str(tmp_path)]) == 1
    verdicts = [c["verdict"] for c in json.loads(res.read_text())["claims"]]
    assert verdicts == ["PASS", "FAIL", "PASS"]


def test_run_experiment_refuses_a_config_its_preset_and_overrides_do_not_give(tmp_path):
    from samkit.experiments import ConfigError, get
    from samkit.experiments.runner import run_experiment

    exp = get("JUDGED")
    cfg = {**exp.config("tiny"), "fail": True}
    with pytest.raises(ConfigError, match="pass the differences as overrides"):
        run_experiment(exp, "tiny", tmp_path, progress=False, config=cfg)
    assert not (tmp_path / "JUDGED").exists()
    same = run_experiment(exp, "tiny", tmp_path, ["fail=true"], progress=False, config=cfg)
    assert [c["verdict"] for c in same["claims"]] == ["PASS", "FAIL", "PASS"]
