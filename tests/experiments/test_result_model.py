"""The result model shared by the runner, the report and the CLI (issue 21): one verdict rule, one folder scan, one
plan type checked once, overrides typed by the schema, and the runner split by concern."""

from __future__ import annotations

import itertools
import json
from typing import ClassVar

import pytest

from samkit.experiments import get
from samkit.experiments.base import INCONCLUSIVE, NOT_EXERCISED, VERDICTS, ConfigError, Experiment, Param, make_claim
from samkit.experiments.plan import Plan, PlanItem, make_plan
from samkit.experiments.results import (
    EXIT_FAIL,
    EXIT_NOT_RUN,
    EXIT_PASS,
    ExperimentResult,
    Problem,
    Tally,
    claim_from_dict,
    experiment_dirs,
    sort_key,
    verdict_of,
)
from samkit.report import summary, verdict_counts

KW = dict(id="X.1", statement="s", setting="", prediction="p", tolerance="t")


def _claim(verdict: str):
    if verdict == NOT_EXERCISED:
        return make_claim(measured="m", passed=True, why=["GD diverged"], **KW)
    return make_claim(measured="m", verdict=verdict, **KW)


@pytest.mark.parametrize("verdict", VERDICTS)
def test_a_claim_read_back_from_json_has_the_verdict_it_was_written_with(verdict):
    c = _claim(verdict)
    assert c.verdict == verdict
    back = json.loads(json.dumps(c.to_dict()))
    assert verdict_of(back) == verdict == claim_from_dict(back).verdict
    assert back["verdict"] == verdict  # what the file says, for readers without samkit


def test_a_result_written_before_the_newer_verdicts_is_judged_by_passed():
    assert verdict_of({"passed": True}) == "PASS" and verdict_of({"passed": False}) == "FAIL"
    # a crafted file cannot claim PASS by its "verdict" text: the flags decide
    assert verdict_of({"verdict": "PASS", "passed": False}) == "FAIL"


def test_the_tally_counts_every_verdict_and_its_exit_code_is_the_clis():
    verdicts = ["PASS", "PASS", "FAIL", INCONCLUSIVE, NOT_EXERCISED]
    results = [
        ExperimentResult({"experiment": "E1", "claims": [_claim(v).to_dict() for v in verdicts[:2]]}),
        {"experiment": "E2", "claims": [_claim(v).to_dict() for v in verdicts[2:]]},
    ]
    t = Tally.of(results)
    assert t.counts == {"FAIL": 1, INCONCLUSIVE: 1, NOT_EXERCISED: 1, "PASS": 2}
    assert (t.passed, t.total) == (2, 5) == summary(results)
    assert verdict_counts(results) == t.counts
    assert t.exit_code([]) == EXIT_FAIL
    assert t.exit_code([Problem("E3", "missing data", "missing")]) == EXIT_NOT_RUN
    assert Tally.of(results[:1]).exit_code([]) == EXIT_PASS
    assert "1 INCONCLUSIVE" in t.notes() and "1 NOT EXERCISED" in t.notes()
    assert Tally.of([]).total == 0 and Tally.of([]).exit_code([]) == EXIT_PASS


def test_every_non_pass_verdict_alone_gives_exit_1():
    for v in ("FAIL", INCONCLUSIVE, NOT_EXERCISED):
        assert Tally.of([{"claims": [_claim(v).to_dict()]}]).exit_code([]) == EXIT_FAIL


def test_a_problem_records_what_failure_json_holds_and_names_its_kind():
    p = Problem("E7", "Fashion-MNIST is missing", "missing")
    assert p.to_dict() == {"experiment": "E7", "reason": "Fashion-MNIST is missing", "kind": "missing"}
    assert p.label == "did not run" and Problem("E1", "x", "odd").label == "did not finish"


def test_one_scan_finds_experiment_folders_in_numeric_order(tmp_path):
    for name, mark in [("E10", "result.json"), ("E2", "config.json"), ("E1", ".lock"), ("X", "failure.json")]:
        (tmp_path / name).mkdir()
        (tmp_path / name / mark).write_text("{}")
    (tmp_path / "notes").mkdir()  # no samkit file: not an experiment
    (tmp_path / "notes" / "a.txt").write_text("x")
    assert [d.name for d in experiment_dirs(tmp_path)] == ["E1", "E2", "E10", "X"]
    assert sorted(["E9", "E10", "E1"], key=sort_key) == ["E1", "E9", "E10"]


def test_a_plan_item_carries_the_config_its_preset_and_overrides_give():
    e4 = get("E4")
    item = PlanItem.of(e4, "tiny", ["seed=3"])
    assert item.config == e4.config("tiny", ["seed=3"]) and item.overrides == ("seed=3",)
    with pytest.raises(ConfigError, match="unknown preset 'huge' for E4"):
        PlanItem.of(e4, "huge")


def test_make_plan_sets_the_device_only_where_an_experiment_has_that_key():
    items = make_plan([get("E1"), get("E7")], "tiny", ["seed=2"], device="cpu")
    assert [i.overrides for i in items] == [("seed=2",), ("seed=2", "device=cpu")]


def test_a_plan_is_checked_when_made():
    e7 = get("E7")
    with pytest.raises(ConfigError, match="--gpus-per-unit 0.5 would reserve GPUs"):
        Plan((PlanItem.of(e7, "tiny"),), gpus_per_unit=0.5)
    with pytest.raises(TypeError, match="PlanItem"):
        Plan(((e7, "tiny", [], e7.config("tiny")),))  # the old 4-tuple is refused, not half-understood
    assert Plan((PlanItem.of(e7, "tiny", ["device=cuda"]),), gpus_per_unit=0.5).gpus_per_unit == 0.5


class _Typed(Experiment):
    name = "TYPED"
    presets: ClassVar = {p: {"eta": 1, "steps": 5, "seed": 0} for p in ("tiny", "quick", "full")}
    schema: ClassVar = {"eta": Param(float, "a step size"), "steps": Param(int, "steps", min=1), "seed": Param(int, "")}


def test_overrides_are_typed_by_the_schema_not_by_the_presets_value():
    # the preset writes eta as the integer 1, the schema says float: 1.5 is a valid step size
    cfg = _Typed().config("tiny", ["eta=1.5"])
    assert cfg["eta"] == 1.5
    with pytest.raises(ConfigError, match="steps: expected an integer, got '1.5'"):
        _Typed().config("tiny", ["steps=1.5"])


def test_the_runner_re_exports_the_names_of_the_modules_that_own_them():
    from samkit.experiments import judging, locking, plan, provenance, results, runner, store

    owners = {
        store: store.__all__,
        locking: locking.__all__,
        provenance: provenance.__all__,
        judging: judging.__all__,
        plan: ["Plan", "PlanItem", "check_sizes"],
    }
    for module, names in owners.items():
        for name in names:
            if name in runner.__all__:
                assert getattr(runner, name) is getattr(module, name), name
    assert runner.ExperimentResult is results.ExperimentResult and runner.Failure is results.Problem


def test_the_report_and_the_cli_use_the_one_model():
    """No module re-derives a verdict or rescans the folder on its own (the review found three and two)."""
    import inspect

    import samkit.cli as cli
    import samkit.report as report

    for module in (cli, report):
        text = inspect.getsource(module)
        assert "'PASS' if" not in text and '"PASS" if' not in text, module.__name__
        assert 'glob(f"*/' not in text and "glob('*/" not in text, module.__name__
    assert "from samkit.experiments.runner" not in inspect.getsource(report)


def test_all_verdict_orders_give_the_same_tally():
    claims = [_claim(v).to_dict() for v in VERDICTS]
    counts = {tuple(Tally.of([{"claims": list(p)}]).counts.items()) for p in itertools.permutations(claims)}
    assert len(counts) == 1


def _meta(config):
    from samkit.experiments.base import stable_hash

    return {"experiment": "E4", "preset": "tiny", "overrides": [], "config": config, "config_hash": stable_hash(config)}


def test_a_config_from_another_samkit_version_is_called_that_not_edited(tmp_path):
    from samkit.experiments.store import StaleConfigError, TamperedConfigError, verify_config

    e4 = get("E4")
    cfg = json.loads(json.dumps(e4.config("tiny")))
    verify_config(e4, _meta(cfg), tmp_path / "config.json")  # the config as written: fine
    older = {k: v for k, v in cfg.items() if k != "seed"}  # an upgrade added `seed`
    with pytest.raises(StaleConfigError, match="another samkit version .*lacks key\\(s\\) seed"):
        verify_config(e4, _meta(older), tmp_path / "config.json")
    with pytest.raises(StaleConfigError, match="has key\\(s\\) old_key this samkit does not know"):
        verify_config(e4, _meta({**cfg, "old_key": 1}), tmp_path / "config.json")
    edited = {**cfg, "seed": cfg["seed"] + 1}  # same keys, another value: edited
    with pytest.raises(TamperedConfigError, match="was edited") as err:
        verify_config(e4, _meta(edited), tmp_path / "config.json")
    assert not isinstance(err.value, StaleConfigError)
