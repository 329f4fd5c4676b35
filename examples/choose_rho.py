"""Choosing ρ with ``samkit sweep``: a grid of training runs, then read ``sweep.csv`` and pick ρ per optimizer.

The sweep is the command line, exactly as you would type it; this script only reads its table. On synthetic data it
takes seconds; for a real choice use your dataset and model and more epochs and seeds (e.g.
``--dataset fashion-mnist --model cnn --epochs 10 --seed 0,1,2``).

    python examples/choose_rho.py [--out sweeps/rho] [--seeds 0,1] [--epochs 2] [--jobs N]
"""

import argparse
import csv
import statistics
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

parser = argparse.ArgumentParser()
parser.add_argument("--out", help="the sweep's folder (default: a new temporary folder)")
parser.add_argument("--rho", default="0.01,0.1,1")
parser.add_argument("--seeds", default="0,1")
parser.add_argument("--epochs", default="2")
parser.add_argument("--jobs", default="auto", help="worker processes (samkit's default: every core)")
args = parser.parse_args()
out = Path(args.out) if args.out else Path(tempfile.mkdtemp()) / "rho"

# 1. the sweep: every combination of the comma lists, one run each in OUT/runs/NAME (resumable), then
#    OUT/sweep.csv (one row per run) and OUT/sweep.png (test accuracy against ρ and against the mean ‖ε‖)
flags = (
    f"--optimizer sam,usam --rho {args.rho} --seed {args.seeds} "
    f"--dataset synthetic --model mlp --epochs {args.epochs} "
    "--synthetic-train 256 --synthetic-test 128 --image-size 8 --batch-size 32 "
    f"--jobs {args.jobs} --no-progress"
)
cmd = [sys.executable, "-m", "samkit", "sweep", *flags.split(), "--out", str(out)]
subprocess.run(cmd, check=True)

# 2. the choice: mean test accuracy over seeds per (optimizer, ρ); a diverged run counts as chance, not as missing
runs = defaultdict(list)
with open(out / "sweep.csv", newline="") as f:
    for row in csv.DictReader(f):
        acc = float(row["final_test_acc"]) if row["status"] == "completed" else 0.0
        runs[row["optimizer"], float(row["rho"])].append((acc, float(row["mean_eps_norm"] or "nan"), row["status"]))

print(f"{'optimizer':9s} {'rho':>6s} {'test acc':>8s} {'mean |eps|':>10s}  runs")
for (opt, rho), rs in sorted(runs.items()):
    acc = statistics.mean(r[0] for r in rs)
    eps = statistics.mean(r[1] for r in rs)
    ok = sum(r[2] == "completed" for r in rs)
    print(f"{opt:9s} {rho:6g} {acc:8.3f} {eps:10.4f}  {ok}/{len(rs)} completed")
for opt in sorted({o for o, _ in runs}):
    best = max((r for o, r in runs if o == opt), key=lambda r: statistics.mean(a for a, _, _ in runs[opt, r]))
    print(f"best rho for {opt}: {best:g}")
print(f"table: {out / 'sweep.csv'}; figure: {out / 'sweep.png'}")
