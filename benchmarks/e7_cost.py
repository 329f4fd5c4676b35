"""E7's cost per preset, estimated from measured epoch times (one CPU thread per run, as the local pool runs them).

For each model of the preset, one SGD run and one SAM run (E7's own unit, :func:`samkit.experiments.e7.runs.run_unit`,
with the preset's images, batch size, final evaluation and eigenvalue measurement) are timed over 3 epochs: the median
epoch (``samkit.train``'s own timing) is the epoch time, the rest of the run the per-run overhead (test evaluation, Lanczos, setup). USAM costs what
SAM costs (two gradients per step). The estimate is then every unit of the preset at full length, summed, and
divided by the jobs: an upper bound, since a diverged run stops early. With ``--measured DIR`` it also prints the
compute time the units of a finished run actually took, per model, for comparison.

    python benchmarks/e7_cost.py [--preset full] [--jobs 2] [--measured results/E7]
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from samkit._threads import torch_threads
from samkit.experiments import get
from samkit.experiments.e7 import runs


def _timed(params: dict) -> tuple[float, list[float]]:
    """Wall time of one E7 unit and the seconds of each of its epochs (``samkit.train``'s own per-epoch timing,
    which excludes the final evaluation and, but for the last epoch, the eigenvalue measurement)."""
    import samkit.train as train_module

    original = train_module.train
    seen: dict = {}

    def spy(cfg, **kw):
        seen["summary"] = original(cfg, **kw)
        return seen["summary"]

    train_module.train = spy  # run_unit imports samkit.train.train when called
    try:
        t = time.perf_counter()
        with torch_threads(1):
            runs.run_unit(params)
        total = time.perf_counter() - t
    finally:
        train_module.train = original
    return total, [float(r["seconds"]) for r in seen["summary"]["history"]]


def epoch_costs(cfg: dict, model: str, epochs: int = 3) -> dict[str, tuple[float, float]]:
    """Per method (sgd, sam): (seconds per epoch, seconds of overhead per run) of ``model`` in ``cfg``'s setting:
    the median of the epochs before the last, and the rest of a run of ``epochs`` epochs."""
    unit = next(u for u in get("E7").units(cfg) if u.params["model"] == model and u.params["optimizer"] == "sam")
    out = {}
    for method in ("sgd", "sam"):
        p = {**unit.params, "optimizer": method, "rho": 0.0 if method == "sgd" else 0.01, "epochs": epochs}
        p.pop("density", None)
        total, seconds = _timed(p)
        epoch = float(np.median(seconds[:-1]))
        out[method] = (epoch, max(total - epochs * epoch, 0.0))
    return out


def measured(folder: Path) -> dict[str, float]:
    """Compute seconds of the finished units of an E7 results folder, per model."""
    per: dict[str, float] = defaultdict(float)
    for f in (folder / "units").glob("*.json"):
        d = json.loads(f.read_text())
        per[d["params"]["model"]] += float(d["seconds"])
    return dict(per)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="full")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--measured", type=Path, default=None, help="an E7 results folder whose unit times to print")
    args = ap.parse_args()
    e7 = get("E7")
    cfg = e7.config(args.preset)
    units = e7.units(cfg)
    print(
        f"E7 preset {args.preset}: {len(units)} runs, {cfg['epochs']} epochs on {cfg['subset']} images, batch "
        f"{cfg['batch_size']}; one thread per run"
    )
    total = 0.0
    for model in cfg["models"]:
        cost = epoch_costs(cfg, model)
        n = defaultdict(int)
        for u in units:
            if u.params["model"] == model:
                n["sgd" if u.params["optimizer"] == "sgd" else "sam"] += 1
        hours = sum(n[m] * (cfg["epochs"] * e + o) for m, (e, o) in cost.items()) / 3600
        total += hours
        print(
            f"  {model:13s} epoch SGD {cost['sgd'][0]:7.3g} s, SAM {cost['sam'][0]:7.3g} s; overhead per run "
            f"{cost['sam'][1]:5.1f} s; {n['sgd']} SGD + {n['sam']} SAM/USAM runs: {hours:8.2f} CPU-hours"
        )
    print(f"  total {total:.2f} CPU-hours = {total * 60 / args.jobs:.0f} minutes with {args.jobs} jobs (upper bound)")
    if args.measured:
        done = measured(args.measured)
        print("  measured compute: " + ", ".join(f"{m} {s / 3600:.2f} CPU-hours" for m, s in done.items()))


if __name__ == "__main__":
    main()
