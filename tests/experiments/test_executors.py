"""Executors and faults: the same bytes from every executor, kills and errors survived, locks, damaged data."""

from __future__ import annotations

import importlib
import json
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from samkit.experiments import ConfigError, get
from samkit.experiments.executors import InlineExecutor, PoolExecutor, Task, make_executor
from samkit.experiments.runner import (
    DamagedDataError,
    LockedError,
    PlanItem,
    UnitError,
    code_fingerprint,
    finalize,
    folder_lock,
    read_json,
    run_experiment,
    run_experiments,
)

HELPERS = Path(__file__).resolve().parents[1] / "helpers"


@pytest.fixture
def squares(monkeypatch):
    monkeypatch.syspath_prepend(str(HELPERS))  # worker processes inherit sys.path, so they import it too
    for var in ("SAMKIT_TEST_KILL_ONCE", "SAMKIT_TEST_FAIL_KEY", "SAMKIT_TEST_MISSING", "SAMKIT_TEST_RENDEZVOUS"):
        monkeypatch.delenv(var, raising=False)
    return importlib.import_module("fault_experiments").Squares()


def _data(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((d / "data").glob("*.csv"))}


def _leftovers(d: Path) -> list[str]:
    return [str(p) for p in d.rglob("*") if p.name.startswith(".") and p.name not in (".lock", ".samkit")]


@pytest.mark.parametrize("name", ["E1", "E7"])
def test_jobs_1_and_2_give_byte_identical_data(name, tmp_path):
    exp = get(name)
    run_experiment(exp, "tiny", tmp_path / "inline", progress=False, executor=InlineExecutor())
    with PoolExecutor(2) as pool:
        res = run_experiment(exp, "tiny", tmp_path / "pool", progress=False, executor=pool)
    a, b = _data(tmp_path / "inline" / name), _data(tmp_path / "pool" / name)
    assert a and a == b
    assert res["run"]["units_cached"] == 0 and res["run"]["unit_seconds"] > 0  # the workers' compute time
    again = run_experiment(exp, "tiny", tmp_path / "pool", progress=False, executor=InlineExecutor())
    assert again["run"]["units_cached"] == len(exp.units(exp.config("tiny"))) and again["run"]["unit_seconds"] == 0
    claims_a = read_json(tmp_path / "inline" / name / "result.json")["claims"]
    assert [c["measured"] for c in claims_a] == [c["measured"] for c in res["claims"]]


def test_pool_really_runs_units_in_parallel_worker_processes(squares, tmp_path, monkeypatch):
    meet = tmp_path / "meet"
    meet.mkdir()
    monkeypatch.setenv("SAMKIT_TEST_RENDEZVOUS", str(meet))  # a unit waits until a second process runs one too
    with PoolExecutor(2) as pool:
        run_experiment(squares, "quick", tmp_path / "out", progress=False, executor=pool)
    pids = {read_json(p)["result"]["pid"] for p in (tmp_path / "out" / "SQUARES" / "units").glob("*.json")}
    assert os.getpid() not in pids and len(pids) == 2
    assert len(os.listdir(meet)) == 2  # two worker processes were inside units at the same time


def test_a_worker_killed_mid_unit_is_retried_and_the_result_is_the_clean_one(squares, tmp_path, monkeypatch):
    clean = tmp_path / "clean"
    run_experiment(squares, "quick", clean, progress=False)
    marker = tmp_path / "killed-once"
    monkeypatch.setenv("SAMKIT_TEST_KILL_ONCE", str(marker))
    with PoolExecutor(2) as pool:
        res = run_experiment(squares, "quick", tmp_path / "killed", progress=False, executor=pool)
    assert marker.exists()  # a worker really died (SIGKILL) in the middle of a unit
    assert res["run"]["units"] == 6 and [c["verdict"] for c in res["claims"]] == ["PASS"]
    assert _data(tmp_path / "killed" / "SQUARES") == _data(clean / "SQUARES")
    assert _leftovers(tmp_path / "killed") == []  # no partial or temporary file


def test_a_unit_that_raises_is_named_and_the_others_finish(squares, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SAMKIT_TEST_FAIL_KEY", "x3")
    with pytest.raises(UnitError) as info:
        with PoolExecutor(2) as pool:
            run_experiment(squares, "quick", tmp_path, progress=False, executor=pool)
    msg = str(info.value)
    assert "SQUARES" in msg and "'x3'" in msg and "x=3.0" in msg and "broken on purpose" in msg
    d = tmp_path / "SQUARES"
    assert len(list((d / "units").glob("*.json"))) == 5  # every other unit finished and was saved
    assert not (d / "config.json").exists() and not (d / "data").exists()  # nothing judged from partial results
    assert "broken on purpose" in read_json(d / "failure.json")["reason"]
    monkeypatch.delenv("SAMKIT_TEST_FAIL_KEY")
    seen = []
    run_experiment(squares, "quick", tmp_path, progress=False, on_unit=lambda k, c: seen.append((k, c)))
    assert [k for k, c in seen if not c] == ["x3"]  # only the failed unit is recomputed
    assert not (d / "failure.json").exists()


def test_interrupt_stops_the_workers_and_keeps_finished_units(squares, tmp_path):
    def stop(key, cached):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        with PoolExecutor(2) as pool:
            run_experiment(squares, "quick", tmp_path, progress=False, executor=pool, on_unit=stop)
    deadline = time.time() + 10
    while multiprocessing.active_children() and time.time() < deadline:
        time.sleep(0.1)
    assert multiprocessing.active_children() == []
    kept = len(list((tmp_path / "SQUARES" / "units").glob("*.json")))
    assert kept >= 1
    seen = []
    run_experiment(squares, "quick", tmp_path, progress=False, on_unit=lambda k, c: seen.append(c))
    assert seen.count(True) == kept and len(seen) == 6


def test_executor_outcomes_carry_errors_instead_of_raising():
    tasks = [Task("T", "ok", {"x": 2}, _square), Task("T", "bad", {"x": "a"}, _square)]
    outcomes = {o.task.key: o for o in InlineExecutor().run(tasks)}
    assert outcomes["ok"].ok and outcomes["ok"].result == {"y": 4}
    assert not outcomes["bad"].ok and "T unit 'bad' (x='a') failed: TypeError" in outcomes["bad"].error


def _square(params):
    return {"y": params["x"] ** 2}


def test_make_executor_validates():
    assert type(make_executor("local", 3)).__name__ == "PoolExecutor"
    with pytest.raises(ValueError, match="unknown executor 'dask'"):
        make_executor("dask")
    with pytest.raises(ValueError, match="jobs must be an integer >= 1, got 0"):
        make_executor("local", 0)
    with pytest.raises(ValueError, match="--address is for --executor ray"):
        make_executor("local", 1, address="auto")


def test_a_second_run_on_the_same_folder_is_refused_while_the_first_holds_it(squares, tmp_path):
    with folder_lock(tmp_path / "SQUARES"):
        with pytest.raises(LockedError, match=f"pid {os.getpid()}"):
            run_experiment(squares, "tiny", tmp_path, progress=False)
    run_experiment(squares, "tiny", tmp_path, progress=False)  # released


def test_a_lock_left_by_a_killed_run_does_not_block(squares, tmp_path):
    code = (
        "import sys, os, signal, pathlib; sys.path.insert(0, sys.argv[2]);"
        "from samkit.experiments.runner import folder_lock;"
        "cm = folder_lock(pathlib.Path(sys.argv[1])); cm.__enter__(); print('held', flush=True);"
        "os.kill(os.getpid(), signal.SIGKILL)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "SQUARES"), str(HELPERS)], capture_output=True, text=True
    )
    assert "held" in out.stdout and (tmp_path / "SQUARES" / ".lock").exists()
    run_experiment(squares, "tiny", tmp_path, progress=False)  # the kernel released the dead process's lock


@pytest.mark.parametrize("content", ["[]", '{"hash": "H", "result": null}', "{truncated", ""])
def test_a_damaged_unit_file_is_a_cache_miss(squares, tmp_path, content):
    run_experiment(squares, "tiny", tmp_path, progress=False)
    victim = sorted((tmp_path / "SQUARES" / "units").glob("*.json"))[0]
    good = victim.read_bytes()
    victim.write_text(content.replace("H", victim.stem.rsplit("-", 1)[1]))
    seen = []
    run_experiment(squares, "tiny", tmp_path, progress=False, on_unit=lambda k, c: seen.append(c))
    assert seen.count(False) == 1
    assert json.loads(victim.read_bytes())["result"] == json.loads(good)["result"]


def test_a_truncated_table_is_refused_not_judged(squares, tmp_path):
    run_experiment(squares, "quick", tmp_path, progress=False)
    d = tmp_path / "SQUARES"
    csv = d / "data" / "squares.csv"
    csv.write_text("\n".join(csv.read_text().splitlines()[:3]) + "\n")
    with pytest.raises(
        DamagedDataError, match=r"squares.csv' is damaged: its sha256 differs"
    ):  # checked before decoding
        finalize(squares, d)
    csv.unlink()
    with pytest.raises(DamagedDataError, match="is missing"):
        finalize(squares, d)


def test_a_failed_run_leaves_the_previous_config_and_data_intact(squares, tmp_path, monkeypatch):
    run_experiment(squares, "tiny", tmp_path, progress=False)
    d = tmp_path / "SQUARES"
    before = (d / "config.json").read_bytes(), _data(d)
    monkeypatch.setenv("SAMKIT_TEST_FAIL_KEY", "x7")
    with pytest.raises(UnitError):
        run_experiment(squares, "tiny", tmp_path, ["xs=1,7"], progress=False)
    assert ((d / "config.json").read_bytes(), _data(d)) == before
    finalize(squares, d)  # the report still judges the old, consistent data


def test_a_missing_prerequisite_is_reported_before_any_unit_runs(squares, tmp_path, monkeypatch):
    monkeypatch.setenv("SAMKIT_TEST_MISSING", "the squares dataset is not installed")
    e1 = get("E1")
    plan = [PlanItem.of(squares, "tiny"), PlanItem.of(e1, "tiny")]
    results, failures = run_experiments(plan, tmp_path, progress=False)
    assert [r["experiment"] for r in results] == ["E1"]
    assert [(f.experiment, f.kind) for f in failures] == [("SQUARES", "missing")]
    assert "not installed" in failures[0].reason
    assert not (tmp_path / "SQUARES" / "units").exists()
    assert read_json(tmp_path / "SQUARES" / "failure.json")["kind"] == "missing"
    with pytest.raises(ConfigError, match="did not run: the squares dataset"):
        run_experiment(squares, "tiny", tmp_path, progress=False)


def test_editing_the_code_of_an_experiment_recomputes_its_units(tmp_path, monkeypatch):
    pkg = tmp_path / "mods"
    pkg.mkdir()
    src = (HELPERS / "fault_experiments.py").read_text()
    (pkg / "editable_exp.py").write_text(src)
    monkeypatch.syspath_prepend(str(pkg))
    mod = importlib.import_module("editable_exp")
    before = code_fingerprint(mod.Squares())
    seen = []
    run_experiment(mod.Squares(), "tiny", tmp_path / "out", progress=False)
    (pkg / "editable_exp.py").write_text(src.replace('params["x"] ** 2', 'params["x"] ** 2 + 0'))
    sys.modules.pop("editable_exp")
    importlib.invalidate_caches()
    from samkit.experiments import provenance

    provenance._FINGERPRINTS.clear()
    mod2 = importlib.import_module("editable_exp")
    assert code_fingerprint(mod2.Squares()) != before
    run_experiment(mod2.Squares(), "tiny", tmp_path / "out", progress=False, on_unit=lambda k, c: seen.append(c))
    assert seen == [False] * 4  # stale units are not reused


def test_the_fingerprint_covers_the_samkit_modules_an_experiment_imports():
    import ast

    from samkit.experiments.provenance import _module_file, _samkit_imports

    path = _module_file("samkit.experiments.e3_theorem1")
    deps = _samkit_imports(ast.parse(path.read_text()), "samkit.experiments.e3_theorem1")
    assert "samkit.dynamics" in deps and "samkit.experiments._common" in deps
    assert code_fingerprint(get("E3")) != code_fingerprint(get("E4"))
