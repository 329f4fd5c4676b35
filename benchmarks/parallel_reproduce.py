"""Wall time of `samkit reproduce` with --jobs 1 against --jobs N, and the executors' overhead per unit.

Prints, in one run (so both sides see the same machine load):
  1. the experiments (default E1-E6 at the quick preset; --experiments E7 for the deep-net one) run from scratch with
     the in-process executor (--jobs 1) and with a local process pool of --jobs workers: seconds and the ratio
     (goal on 2 cores: <= 0.6), and that the data files are byte-identical;
  2. the overhead per unit of each executor on tiny units (a unit that returns at once): in-process, local pool,
     and Ray when it is installed (a local instance with the same number of CPUs).

    python benchmarks/parallel_reproduce.py                 # E1-E6 quick, --jobs 2
    python benchmarks/parallel_reproduce.py --experiments E7 --jobs 2
    python benchmarks/parallel_reproduce.py --skip-reproduce --units 200
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from samkit.experiments import get
from samkit.experiments.executors import InlineExecutor, PoolExecutor, RayExecutor, Task
from samkit.experiments.runner import PlanItem, run_experiments


def _reproduce(names, preset, executor, out):
    plan = [PlanItem.of(get(n), preset) for n in names]
    t0 = time.perf_counter()
    results, failures = run_experiments(plan, out, executor, progress=False)
    if failures:
        raise SystemExit(f"failed: {[f.reason for f in failures]}")
    return time.perf_counter() - t0


def _data(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.glob("*/data/*.csv"))}


def _per_unit(executor, n: int) -> float:
    # The unit function must be importable by the workers: a function defined in this script (``__main__``) would
    # make the pool run every unit in this process (see ``executors.portable``) and measure nothing. ``dict`` copies
    # the parameters: a unit that returns at once.
    tasks = [Task("bench", f"u{i}", {"i": i}, dict) for i in range(n)]
    list(executor.run(tasks[: min(4, n)]))  # warm the workers up
    t0 = time.perf_counter()
    got = list(executor.run(tasks))
    assert len(got) == n and all(o.ok for o in got)
    return (time.perf_counter() - t0) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--experiments", default="E1,E2,E3,E4,E5,E6")
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--units", type=int, default=100, help="tiny units for the overhead measurement")
    ap.add_argument("--skip-reproduce", action="store_true")
    args = ap.parse_args()
    print(f"cores usable: {len(os.sched_getaffinity(0))}, load average {os.getloadavg()[0]:.2f}")
    if not args.skip_reproduce:
        names = args.experiments.split(",")
        with tempfile.TemporaryDirectory() as tmp:
            serial = _reproduce(names, args.preset, InlineExecutor(), Path(tmp) / "serial")
            with PoolExecutor(args.jobs) as pool:
                parallel = _reproduce(names, args.preset, pool, Path(tmp) / "parallel")
            same = _data(Path(tmp) / "serial") == _data(Path(tmp) / "parallel")
        print(
            f"reproduce {','.join(names)} --preset {args.preset}: --jobs 1 {serial:.1f} s, --jobs {args.jobs} "
            f"{parallel:.1f} s, ratio {parallel / serial:.2f} (goal <= 0.6 on 2 cores); data identical: {same}"
        )
    inline = _per_unit(InlineExecutor(), args.units)
    with PoolExecutor(args.jobs) as pool:
        pooled = _per_unit(pool, args.units)
    line = f"overhead per tiny unit: in-process {inline * 1e3:.2f} ms, pool({args.jobs}) {pooled * 1e3:.2f} ms"
    try:
        import ray

        ray.init(num_cpus=args.jobs, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        try:
            rayed = _per_unit(RayExecutor(), args.units)
        finally:
            ray.shutdown()
        line += f", Ray {rayed * 1e3:.2f} ms ({rayed / pooled:.1f}x the pool)"
    except ImportError:
        line += ", Ray not installed (pip install 'samkit[ray]')"
    print(line)


if __name__ == "__main__":
    sys.exit(main())
