"""The optimizer benchmarks of ``optimizer_overhead.py`` on a CUDA device: foreach vs fused vs the naive SAM.

1. Overhead beyond the base step (first_step + second_step − base SGD step, fixed gradients), 200 parameter tensors,
   timed with CUDA events after ``torch.cuda.synchronize()``; ratios against the davda54-style SAM of the same run.
2. Whole SAM step / SGD step on ResNet-20, batch 128, for foreach and fused.

Skips (exit 0) where CUDA is not available.

    python benchmarks/gpu_optimizer.py [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import sys

import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from optimizer_overhead import _deep_mlp, p1_runs, resnet_steps  # noqa: E402


def _cuda_time(fn, reps: int) -> float:
    """Seconds per call, by CUDA events around ``reps`` calls (synchronized before and after)."""
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1e3 / reps


def overhead(reps: int, rounds: int) -> dict[str, float]:
    runs = p1_runs(_deep_mlp().cuda(), dict(lr=1e-6, momentum=0.9, foreach=True))
    for f in runs.values():
        _cuda_time(f, 5)
    t: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(rounds):
        for k, f in runs.items():
            t[k].append(_cuda_time(f, reps))
    out = {k: statistics.median(v) for k, v in t.items()}
    for k in ("foreach", "fused"):
        out[f"ratio_{k}"] = statistics.median((a - b) / (n - b) for a, n, b in zip(t[k], t["naive"], t["base"]))
    return out


def resnet(batch: int, reps: int, rounds: int) -> dict[str, float]:
    steps = resnet_steps(batch, "cuda")
    for f in steps.values():
        _cuda_time(f, 3)
    t: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(rounds):
        for k, f in steps.items():
            t[k].append(_cuda_time(f, reps))
    return {k: statistics.median(v) for k, v in t.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (noisier)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu_optimizer: CUDA is not available; skipped")
        return
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}")
    r = overhead(reps=20 if args.quick else 100, rounds=5 if args.quick else 11)
    print(
        f"[overhead] base SGD step {r['base'] * 1e3:.3f} ms; beyond it: foreach {(r['foreach'] - r['base']) * 1e3:.3f} "
        f"ms, fused {(r['fused'] - r['base']) * 1e3:.3f} ms, davda54-style {(r['naive'] - r['base']) * 1e3:.3f} ms"
    )
    print(f"[overhead] ratio / davda54-style: foreach {r['ratio_foreach']:.3f}, fused {r['ratio_fused']:.3f}")
    t = resnet(128, reps=5 if args.quick else 20, rounds=3 if args.quick else 5)
    print(
        f"[resnet20] SGD {t['sgd'] * 1e3:.2f} ms, SAM foreach {t['foreach'] * 1e3:.2f} ms, "
        f"fused {t['fused'] * 1e3:.2f} ms"
    )
    print(f"[resnet20] SAM / SGD: foreach {t['foreach'] / t['sgd']:.3f}, fused {t['fused'] / t['sgd']:.3f}")


if __name__ == "__main__":
    main()
