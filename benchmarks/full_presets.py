"""P8: the theory experiments' full presets (E1-E6) with the default jobs, against the 6-minute goal.

Runs ``samkit reproduce``'s work for E1-E6 at ``--preset full`` from scratch with a local pool of ``--jobs``
workers (default: the cores this process may use, as ``samkit reproduce``), and prints the wall time, its ratio to
the goal (360 s on 2 cores), when each experiment finished and the compute time of its units, so the longest unit
(the critical path) is visible. With ``--serial`` it also runs them with ``--jobs 1`` in the same run and prints the
parallel/serial ratio and whether the data are byte-identical.

    python benchmarks/full_presets.py [--jobs N] [--serial] [--experiments E1,E2]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from samkit.experiments import get
from samkit.experiments.executors import InlineExecutor, PoolExecutor, default_jobs
from samkit.experiments.runner import PlanItem, run_experiments

GOAL_SECONDS = 360.0


def _run(names: list[str], executor, out: Path) -> tuple[float, list[tuple[str, float, float, float]]]:
    t0 = time.perf_counter()
    finished: list[tuple[str, float, float, float]] = []

    def done(res) -> None:
        units = [float(u) for u in _unit_seconds(out / res["experiment"])]
        finished.append((res["experiment"], time.perf_counter() - t0, sum(units), max(units, default=0.0)))

    plan = [PlanItem.of(get(n), "full") for n in names]
    _, failures = run_experiments(plan, out, executor, progress=False, on_result=done)
    if failures:
        raise SystemExit(f"failed: {[f.reason for f in failures]}")
    return time.perf_counter() - t0, finished


def _unit_seconds(exp_dir: Path) -> list[float]:
    import json

    return [json.loads(p.read_text())["seconds"] for p in sorted((exp_dir / "units").glob("*.json"))]


def _data(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.glob("*/data/*.csv"))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--experiments", default="E1,E2,E3,E4,E5,E6")
    ap.add_argument("--jobs", type=int, default=None, help="default: every core this process may use")
    ap.add_argument("--serial", action="store_true", help="also run with --jobs 1 and compare")
    args = ap.parse_args()
    names = args.experiments.split(",")
    jobs = args.jobs or default_jobs()
    print(f"cores usable: {len(os.sched_getaffinity(0))}, jobs {jobs}, load average {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        with PoolExecutor(jobs) as pool:
            wall, finished = _run(names, pool, Path(tmp) / "pool")
        for name, at, compute, longest in finished:
            print(f"  {name}: done after {at:.1f} s; units {compute:.1f} s of compute, the longest {longest:.1f} s")
        print(f"P8 full presets {','.join(names)}, --jobs {jobs}: {wall:.1f} s = {wall / GOAL_SECONDS:.2f}x the goal")
        if args.serial:
            serial, _ = _run(names, InlineExecutor(), Path(tmp) / "serial")
            same = _data(Path(tmp) / "pool") == _data(Path(tmp) / "serial")
            print(f"  --jobs 1: {serial:.1f} s; parallel/serial {wall / serial:.2f}; data identical: {same}")


if __name__ == "__main__":
    main()
