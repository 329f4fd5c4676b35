"""samkit sweep: a grid of training runs as units, resumable, identical on any executor, one table and figure."""

from __future__ import annotations

import dataclasses
import math

import pytest

from samkit.experiments.base import read_table
from samkit.experiments.executors import InlineExecutor, PoolExecutor
from samkit.experiments.runner import read_json
from samkit.sweep import SweepRun, expand_grid, run_name, run_sweep
from samkit.train import TrainConfig, TrainError

BASE = TrainConfig(
    dataset="synthetic",
    model="mlp",
    epochs=2,
    batch_size=32,
    lr=0.1,
    momentum=0.0,
    weight_decay=0.0,
    synthetic_train=128,
    synthetic_test=64,
    progress=False,
    quiet=True,
)


def _runs(grid):
    return [SweepRun(run_name(p), p, dataclasses.replace(BASE, **p)) for p in expand_grid(grid)]


GRID = {"optimizer": ["sam", "usam"], "rho": [0.05, 0.5], "seed": [0]}


def test_sweep_writes_one_row_per_run_and_the_norms_follow_each_rule(tmp_path):
    rows = run_sweep(_runs(GRID), tmp_path, progress=False)
    assert [r["run"] for r in rows] == [
        "optimizer=sam,rho=0.05,seed=0",
        "optimizer=sam,rho=0.5,seed=0",
        "optimizer=usam,rho=0.05,seed=0",
        "optimizer=usam,rho=0.5,seed=0",
    ]
    table = read_table(tmp_path / "sweep.csv")
    assert len(table) == 4 and (tmp_path / "sweep.png").stat().st_size > 10_000
    for r in table.rows:
        assert r["status"] == "completed" and r["epochs_done"] == 2
        assert read_json(tmp_path / "runs" / r["run"] / "summary.json")["final_test_acc"] == r["final_test_acc"]
        if r["optimizer"] == "sam":  # SAM's ‖ε‖ is ρ at every step
            assert math.isclose(r["mean_eps_norm"], r["rho"], rel_tol=1e-6)
        else:  # USAM's is ρ‖g‖ at every step, so the means are proportional too
            assert math.isclose(r["mean_eps_norm"], r["rho"] * r["mean_grad_norm"], rel_tol=1e-5)
            assert not math.isclose(r["mean_eps_norm"], r["rho"], rel_tol=1e-2)


def test_a_rerun_skips_finished_runs_and_a_pool_gives_the_same_table(tmp_path):
    runs = _runs(GRID)
    run_sweep(runs, tmp_path / "a", progress=False)
    first = (tmp_path / "a" / "sweep.csv").read_bytes()
    stamp = {p: p.stat().st_mtime_ns for p in (tmp_path / "a" / "runs").glob("*/checkpoint.pt")}
    run_sweep(runs, tmp_path / "a", progress=False)
    assert (tmp_path / "a" / "sweep.csv").read_bytes() == first
    assert {p: p.stat().st_mtime_ns for p in stamp} == stamp  # nothing retrained
    with PoolExecutor(2) as pool:
        run_sweep(runs, tmp_path / "b", pool, progress=False)
    assert (tmp_path / "b" / "sweep.csv").read_bytes() == first


def test_an_interrupted_run_resumes_from_its_checkpoint(tmp_path):
    from samkit.train import train

    runs = _runs({"optimizer": ["sam"], "rho": [0.05]})
    cfg = dataclasses.replace(runs[0].config, out=str(tmp_path / "a" / "runs" / runs[0].name), threads=1)
    train(cfg, stop_after_epoch=1)  # as if killed after the first epoch
    run_sweep(runs, tmp_path / "a", InlineExecutor(), progress=False)
    run_sweep(runs, tmp_path / "b", progress=False)
    assert (tmp_path / "a" / "sweep.csv").read_bytes() == (tmp_path / "b" / "sweep.csv").read_bytes()


def test_bad_grids_are_refused_before_any_run(tmp_path):
    with pytest.raises(ValueError, match="the grid of 'rho' is empty"):
        expand_grid({"rho": []})
    with pytest.raises(TrainError):
        run_sweep(_runs({"optimizer": ["sam"], "rho": [-1.0]}), tmp_path, progress=False)
    assert not (tmp_path / "runs").exists()
