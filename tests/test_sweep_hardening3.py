"""samkit sweep, hardening 3: exact run names and sweep.csv values, --lam across optimizers, folders that are
samkit's or refused, and no leaked semaphores after Ctrl-C."""

from __future__ import annotations

import csv
import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from samkit._io import UnsafePathError
from samkit.cli import main
from samkit.experiments.runner import read_json
from samkit.sweep import SweepRun, expand_grid, run_name, run_sweep
from samkit.train import TrainConfig

BASE = TrainConfig(
    dataset="synthetic",
    model="mlp",
    epochs=1,
    batch_size=32,
    lr=0.1,
    momentum=0.0,
    weight_decay=0.0,
    synthetic_train=64,
    synthetic_test=32,
    image_size=8,
    progress=False,
    quiet=True,
    threads=1,
)
TINY = [
    "--dataset",
    "synthetic",
    "--model",
    "mlp",
    "--epochs",
    "1",
    "--batch-size",
    "32",
    "--synthetic-train",
    "64",
    "--synthetic-test",
    "32",
    "--image-size",
    "8",
    "--jobs",
    "1",
    "--no-progress",
]


def _runs(grid):
    return [SweepRun(run_name(p), p, dataclasses.replace(BASE, **p)) for p in expand_grid(grid)]


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


# -- 4. names and sweep.csv keep every digit -----------------------------------------------------------------------


def test_grid_values_that_differ_beyond_six_digits_get_their_own_runs_and_exact_rows(tmp_path):
    """Before: both names were `rho=0.05` (`:g`): the sweep was refused as two runs with the same flags, and
    sweep.csv held the rounded value."""
    rhos = [0.05, 0.0500000001]
    assert run_name({"rho": rhos[0]}) != run_name({"rho": rhos[1]})
    rows = run_sweep(_runs({"rho": rhos}), tmp_path, progress=False)
    assert [r["status"] for r in rows] == ["completed", "completed"]
    table = _csv(tmp_path / "sweep.csv")
    assert [float(r["rho"]) for r in table] == rhos  # read back exactly
    for r in table:
        assert read_json(tmp_path / "runs" / r["run"] / "config.json")["rho"] == float(r["rho"])


def test_run_names_stay_short_where_that_is_exact_and_are_file_name_safe():
    # the names of earlier sweeps are kept wherever `:g` was already exact, so their reruns resume
    assert run_name({"optimizer": "sam", "rho": 0.05, "seed": 0}) == "optimizer=sam,rho=0.05,seed=0"
    assert run_name({"rho": 100.0, "lr": 1e-5}) == "rho=100,lr=1e-05"
    assert run_name({"rho": 1234567.0}) == "rho=1234567.0"  # `:g` said 1.23457e+06
    assert run_name({"rho": 0.1 + 0.2}) == "rho=0.30000000000000004"
    names = {run_name({"data_dir": d}) for d in ("a/b", "a_b", "a:b")}
    assert len(names) == 3 and all("/" not in n and not n.startswith(".") for n in names)
    long = [run_name({"data_dir": "x" * 200 + str(i)}) for i in range(3)]
    assert len(set(long)) == 3 and all(len(n) <= 120 for n in long)


# -- 5. --lam applies to the swept optimizers that take it ---------------------------------------------------------


def test_lam_applies_to_unified_only_when_sweeping_several_optimizers(tmp_path, capsys):
    """Before: `samkit sweep --optimizer sam,unified --lam 0.5` was refused because sam does not take --lam."""
    out = tmp_path / "s"
    code = main(["sweep", *TINY, "--optimizer", "sam,unified", "--lam", "0.5", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    runs = {p.name: read_json(p / "config.json") for p in (out / "runs").iterdir()}
    assert sorted(runs) == ["optimizer=sam", "optimizer=unified"]
    assert runs["optimizer=sam"]["lam"] is None and runs["optimizer=unified"]["lam"] == 0.5
    table = {r["run"]: r for r in _csv(out / "sweep.csv")}
    assert table["optimizer=unified"]["status"] == table["optimizer=sam"]["status"] == "completed"


def test_a_swept_lam_gives_one_run_to_the_optimizers_that_ignore_it(tmp_path):
    runs = _runs({"optimizer": ["sam", "unified"], "lam": [0.0, 1.0]})
    rows = run_sweep(runs, tmp_path, progress=False)
    assert [r["run"] for r in rows] == ["optimizer=sam", "optimizer=unified,lam=0", "optimizer=unified,lam=1"]
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == sorted(r["run"] for r in rows)


def test_lam_is_still_refused_when_no_swept_optimizer_takes_it(tmp_path, capsys):
    out = tmp_path / "s"
    code = main(["sweep", *TINY, "--optimizer", "sam,usam", "--lam", "0.5", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "--lam is only used with --optimizer unified" in err and err.count("\n") == 1
    assert not (out / "runs").exists()
    code = main(["sweep", *TINY, "--optimizer", "sam,usam", "--gsam-alpha", "0.2", "--out", str(out)])
    assert code == 2 and "--gsam-alpha is only used with --optimizer gsam" in capsys.readouterr().err


# -- 3. the sweep's folders are samkit's or refused ----------------------------------------------------------------


def test_sweep_refuses_a_folder_with_the_users_files(tmp_path, capsys):
    """Before: `samkit sweep --out DIR` wrote sweep.csv, sweep.png and runs/ into any folder."""
    mine = tmp_path / "project"
    mine.mkdir()
    (mine / "sweep.csv").write_text("my,own\n1,2\n")
    code = main(["sweep", *TINY, "--rho", "0.1,0.2", "--out", str(mine)])
    err = capsys.readouterr().err
    assert code == 2 and "did not write" in err and err.count("\n") == 1
    assert (mine / "sweep.csv").read_text() == "my,own\n1,2\n" and not (mine / "runs").exists()
    # and a run folder inside runs/ holding the user's file is refused before any run starts
    out = tmp_path / "s"
    runs = _runs({"rho": [0.1, 0.2]})
    (out / "runs" / runs[1].name).mkdir(parents=True)
    (out / "runs" / runs[1].name / "metrics.csv").write_text("my data\n")
    with pytest.raises(UnsafePathError, match="did not write"):
        run_sweep(runs, out, progress=False)
    assert (out / "runs" / runs[1].name / "metrics.csv").read_text() == "my data\n"
    assert not (out / "runs" / runs[0].name / "checkpoint.pt").exists()
    # a folder that was never samkit's, whose runs/ holds something else than run folders, is refused whole
    other = tmp_path / "other"
    (other / "runs").mkdir(parents=True)
    (other / "runs" / "notes.txt").write_text("mine")
    with pytest.raises(UnsafePathError, match="'runs'"):
        run_sweep(runs, other, progress=False)
    assert sorted(p.name for p in other.rglob("*")) == ["notes.txt", "runs"]


def test_a_sweep_folder_of_an_older_samkit_is_rerun(tmp_path):
    out = tmp_path / "s"
    runs = _runs({"rho": [0.1, 0.2]})
    first = run_sweep(runs, out, progress=False)
    for marker in out.rglob(".samkit"):
        marker.unlink()
    (out / ".lock").write_text("")  # the CLI's lock file
    assert run_sweep(runs, out, progress=False) == first


# -- 6. Ctrl-C leaves no leaked semaphore --------------------------------------------------------------------------


def _ctrl_c_as_in_a_terminal() -> None:
    """In the child before exec: SIGINT handled by default and not blocked, as under a terminal. An ignored signal is
    inherited across exec, and a shell starts background jobs with SIGINT ignored: CI launched that way made the
    sweep ignore the test's Ctrl-C and hang (under `timeout`, which resets it, the test passed)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def test_ctrl_c_on_a_pool_sweep_leaves_no_leaked_semaphore(tmp_path):
    """Before: after Ctrl-C the resource tracker warned `There appear to be 2 leaked semaphore objects`: each worker
    made a multiprocessing lock for a progress bar it never showed, and was killed holding it."""
    out = tmp_path / "s"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"), SAMKIT_THREADS="1")
    argv = [*TINY, "--epochs", "100000", "--rho", "0.1,0.2", "--jobs", "2", "--out", str(out)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "samkit", "sweep", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
        preexec_fn=_ctrl_c_as_in_a_terminal,
    )
    try:
        deadline = time.monotonic() + 90
        while len(list((out / "runs").glob("*/checkpoint.pt"))) < 2 and time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.2)
        assert len(list((out / "runs").glob("*/checkpoint.pt"))) == 2  # both workers are in their epochs
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C reaches the whole process group
        try:
            _, err = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            _, err = proc.communicate()
            pytest.fail(f"the sweep did not stop within 120 s of Ctrl-C; stderr: {err}")
    assert proc.returncode == 130, err
    assert "leaked" not in err and "Traceback" not in err, err
