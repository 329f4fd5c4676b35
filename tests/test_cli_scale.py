"""The command line of scale-out: --jobs / --executor / --address, samkit sweep, and the runtime exit code 3."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

from samkit.cli import main
from samkit.experiments import register
from samkit.experiments.base import read_table

HELPERS = Path(__file__).resolve().parent / "helpers"


@pytest.fixture
def squares(monkeypatch):
    monkeypatch.syspath_prepend(str(HELPERS))
    for var in ("SAMKIT_TEST_KILL_ONCE", "SAMKIT_TEST_FAIL_KEY", "SAMKIT_TEST_MISSING"):
        monkeypatch.delenv(var, raising=False)
    cls = importlib.import_module("fault_experiments").Squares
    register(cls)
    return cls


def test_jobs_and_executor_flags_are_checked(tmp_path, capsys):
    for argv, msg in [
        (["run", "E1", "--jobs", "0"], "--jobs: must be 'auto' or an integer >= 1, got '0'"),
        (["run", "E1", "--executor", "dask"], "invalid choice: 'dask'"),
        (["run", "E1", "--preset", "tiny", "--address", "auto"], "--address and --gpus-per-unit need --executor ray"),
        (["run", "E1", "--device", "gpu"], "invalid choice: 'gpu'"),
        # GPUs asked for training units that train on the CPU: refused before Ray starts
        (
            ["run", "E7", "--preset", "tiny", "--executor", "ray", "--gpus-per-unit", "0.5"],
            "--gpus-per-unit 0.5 would reserve GPUs for E7's training units, but they train on device=cpu: add "
            "--device cuda",
        ),
    ]:
        with pytest.raises(SystemExit) as info:
            code = main([*argv, "--out", str(tmp_path)])
            raise SystemExit(code)
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert msg in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_device_sets_the_device_key_of_the_experiments_that_train_only(tmp_path, monkeypatch):
    import samkit.cli as cli

    seen = {}

    def fake_run_experiments(plan, out, executor, **kw):
        seen.update({i.exp.name: (list(i.overrides), i.config.get("device")) for i in plan.items})
        return [], []

    monkeypatch.setattr(cli, "run_experiments", fake_run_experiments)
    monkeypatch.setattr(cli, "write_report", lambda out: ("index.html", "README.md"))
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)  # as on a GPU machine (no device is touched)
    cli.main(["reproduce", "--preset", "tiny", "--device", "cuda", "--jobs", "1", "--out", str(tmp_path)])
    assert seen["E7"] == (["device=cuda"], "cuda")  # E7 trains networks on a torch device
    assert seen["E1"] == ([], None) and seen["E8"] == ([], None)  # the others have no such key


def test_executor_ray_without_ray_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    assert main(["run", "E1", "--preset", "tiny", "--executor", "ray", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "samkit: error: --executor ray needs Ray: pip install 'samkit[ray]' (or pip install ray)"


def test_a_failing_unit_exits_3_and_names_it_while_the_report_is_still_written(squares, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SAMKIT_TEST_FAIL_KEY", "x2")
    code = main(["run", "SQUARES", "--preset", "tiny", "--jobs", "2", "--out", str(tmp_path), "--no-progress"])
    assert code == 3
    err = capsys.readouterr().err
    assert "SQUARES unit 'x2'" in err and "broken on purpose" in err and "Traceback" not in err
    assert (tmp_path / "index.html").exists()
    monkeypatch.delenv("SAMKIT_TEST_FAIL_KEY")
    assert main(["run", "SQUARES", "--preset", "tiny", "--jobs", "1", "--out", str(tmp_path), "--no-progress"]) == 0
    csv = tmp_path / "SQUARES" / "data" / "squares.csv"
    csv.write_text(csv.read_text().splitlines()[0] + "\n")
    assert main(["report", str(tmp_path)]) == 3
    assert "is damaged" in capsys.readouterr().err


def test_sweep_command_runs_the_grid_and_resumes(tmp_path, capsys):
    argv = [
        "sweep",
        "--out",
        str(tmp_path),
        "--jobs",
        "1",
        "--no-progress",
        "--dataset",
        "synthetic",
        "--model",
        "mlp",
        "--epochs",
        "1",
        "--synthetic-train",
        "64",
        "--synthetic-test",
        "32",
        "--batch-size",
        "32",
        "--optimizer",
        "sam,usam",
        "--rho",
        "0.05,0.5",
    ]
    assert main(argv) == 0
    assert "4 runs (0 failed)" in capsys.readouterr().out
    table = read_table(tmp_path / "sweep.csv")
    assert [(r["optimizer"], r["rho"]) for r in table.rows] == [
        ("sam", 0.05),
        ("sam", 0.5),
        ("usam", 0.05),
        ("usam", 0.5),
    ]
    assert all(r["status"] == "completed" and r["epochs_done"] == 1 for r in table.rows)
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == [
        "optimizer=sam,rho=0.05",
        "optimizer=sam,rho=0.5",
        "optimizer=usam,rho=0.05",
        "optimizer=usam,rho=0.5",
    ]
    before = (tmp_path / "sweep.csv").read_bytes()
    assert main(argv) == 0 and (tmp_path / "sweep.csv").read_bytes() == before


@pytest.mark.parametrize(
    ("flags", "msg"),
    [
        (["--rho", "0.1,x"], "argument --rho: invalid float value 'x' in '0.1,x'"),
        (["--optimizer", "sam,adamw"], "invalid choice 'adamw'"),
        (["--rho", "0.1"], "needs at least one flag with several values"),
        (["--rho", "0.1,-1"], "rho"),
    ],
)
def test_sweep_refuses_bad_grids_in_one_line(flags, msg, tmp_path, capsys):
    try:
        code = main(["sweep", "--out", str(tmp_path), "--dataset", "synthetic", *flags])
    except SystemExit as exit_:
        code = exit_.code
    assert code == 2
    err = capsys.readouterr().err
    assert msg in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()
