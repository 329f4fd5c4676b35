"""Optimizer-side overhead of samkit.SAM, as ratios against baselines measured in the same run.

1. Overhead beyond the base step (first_step + second_step − base step, with fixed gradients) on a model with
   200 parameter tensors, against a per-tensor implementation written here the way davda54/sam does it (per-parameter
   loop, stacked norm of ``1.0 * grad``, ``clone()`` backups, restore by rebinding ``p.data``). CPU time of the one
   thread, ratio per round, median. Goal: ratio <= 0.25. Also the passes over the parameters per step (operations
   that take the whole parameter or gradient list).
2. Whole SAM step / SGD step on a CIFAR-style ResNet-20 at batch 128 (two forward-backward passes make 2.0 the
   limit). Goal: <= 2.03.

Timings are medians over interleaved repetitions, on one thread (``--threads``); the load average is printed because
these machines are shared.

    python benchmarks/optimizer_overhead.py [--quick] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import samkit
from samkit.models import ResNet20


class NaiveSAM(torch.optim.Optimizer):
    """The per-tensor SAM most peer code ships, written the way the most used PyTorch SAM (davda54/sam) is: a Python
    loop over the parameters, the norm of a ``torch.stack`` of per-tensor norms of ``1.0 * grad`` (each moved to the
    first parameter's device), a fresh ``clone()`` backup per parameter kept in ``self.state``, the perturbation
    ``e_w = 1.0 * grad * scale`` added with ``p.add_(e_w)``, and the restore by rebinding ``p.data`` to the backup."""

    def __init__(self, params, base: torch.optim.Optimizer, rho: float = 0.05) -> None:
        super().__init__(params, dict(rho=rho))
        self.base = base

    def _grad_norm(self) -> torch.Tensor:
        device = self.param_groups[0]["params"][0].device
        per_tensor = [
            (1.0 * p.grad).norm(p=2).to(device) for g in self.param_groups for p in g["params"] if p.grad is not None
        ]
        return torch.norm(torch.stack(per_tensor), p=2)

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False) -> None:
        grad_norm = self._grad_norm()
        for group in self.param_groups:
            scale = group["rho"] / (grad_norm + 1e-12)
            for p in group["params"]:
                if p.grad is None:
                    continue
                self.state[p]["old_p"] = p.data.clone()
                e_w = 1.0 * p.grad * scale.to(p)
                p.add_(e_w)
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                p.data = self.state[p]["old_p"]
        self.base.step()
        if zero_grad:
            self.zero_grad()


def _deep_mlp(n_layers: int = 100, width: int = 64) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(*[nn.Linear(width, width) for _ in range(n_layers)])


def _time(fn, reps: int, clock=time.perf_counter) -> float:
    t0 = clock()
    for _ in range(reps):
        fn()
    return (clock() - t0) / reps


class _Passes(TorchDispatchMode):
    """Counts the operations that go over the whole parameter (or gradient) list: one pass each (a list of their
    per-tensor norms, e.g. the input of a ``torch.stack``, is not a pass)."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n, self.ops = n, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if any(isinstance(a, (list, tuple)) and len(a) == self.n and a[0].numel() > 1 for a in args):
            self.ops.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def passes(opt: torch.optim.Optimizer, n: int) -> list[str]:
    """The passes over the parameters of one first_step + second_step."""
    with _Passes(n) as mode:
        opt.first_step()
        opt.second_step()
    return mode.ops


def overhead(reps: int, rounds: int) -> dict[str, float | int | list[str]]:
    model = _deep_mlp()
    params = list(model.parameters())
    gen = torch.Generator().manual_seed(0)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen)
    base_ours = torch.optim.SGD(params, lr=1e-6, momentum=0.9)
    ours = samkit.SAM(params, base_ours, rho=0.05)
    base_naive = torch.optim.SGD(params, lr=1e-6, momentum=0.9)
    naive = NaiveSAM(params, base_naive, rho=0.05)
    base_only = torch.optim.SGD(params, lr=1e-6, momentum=0.9)

    def run_ours():
        ours.first_step()
        ours.second_step()

    def run_naive():
        naive.first_step()
        naive.second_step()

    for f in (run_ours, run_naive, base_only.step):  # warm-up
        _time(f, 5)
    ops = passes(ours, len(params))
    # CPU time of this (single) thread: what the optimizer costs, without the time other processes take the core
    ratios, t_ours, t_naive, t_base = [], [], [], []
    for _ in range(rounds):
        t_base.append(_time(base_only.step, reps, time.thread_time))
        t_ours.append(_time(run_ours, reps, time.thread_time))
        t_naive.append(_time(run_naive, reps, time.thread_time))
        ratios.append((t_ours[-1] - t_base[-1]) / (t_naive[-1] - t_base[-1]))
    b = statistics.median(t_base)
    return dict(
        ours=statistics.median(t_ours) - b,
        naive=statistics.median(t_naive) - b,
        base=b,
        ratio=statistics.median(ratios),
        ratios=ratios,
        n=len(params),
        passes=ops,
    )


def resnet_ratio(batch: int, reps: int, rounds: int) -> tuple[float, float]:
    torch.manual_seed(0)
    x = torch.randn(batch, 3, 32, 32)
    y = torch.randint(0, 10, (batch,))
    model = ResNet20()
    loss_fn = nn.CrossEntropyLoss()
    sgd = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    sam = samkit.SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=1e-4, momentum=0.9)

    def sgd_step():
        sgd.zero_grad()
        loss_fn(model(x), y).backward()
        sgd.step()

    def closure():
        sam.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        return loss

    def sam_step():
        sam.step(closure)

    sgd_step(), sam_step()  # warm-up
    t_sgd, t_sam = [], []
    for _ in range(rounds):
        t_sgd.append(_time(sgd_step, reps))
        t_sam.append(_time(sam_step, reps))
    return statistics.median(t_sam), statistics.median(t_sgd)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (noisier)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: a fixed count)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, load average {os.getloadavg()}")

    r = overhead(reps=20 if args.quick else 50, rounds=5 if args.quick else 11)
    print(f"[overhead] {r['n']} parameter tensors, fixed gradients; base SGD step {r['base'] * 1e3:.3f} ms (CPU time)")
    print(f"[overhead] passes over the parameters per SAM step: {len(r['passes'])} ({', '.join(r['passes'])})")
    print(
        f"[overhead] samkit SAM beyond base step: {r['ours'] * 1e3:.3f} ms; davda54-style per-tensor SAM: "
        f"{r['naive'] * 1e3:.3f} ms"
    )
    spread = ", ".join(f"{x:.3f}" for x in sorted(r["ratios"]))
    print(f"[overhead] ratio samkit / davda54-style = {r['ratio']:.3f} (median of rounds: {spread})   (goal <= 0.25)")

    t_sam, t_sgd = resnet_ratio(batch=128, reps=2 if args.quick else 3, rounds=2 if args.quick else 3)
    print(f"[resnet20] batch 128: SGD step {t_sgd * 1e3:.1f} ms, SAM step {t_sam * 1e3:.1f} ms")
    print(f"[resnet20] ratio SAM / SGD = {t_sam / t_sgd:.3f}   (goal <= 2.03; two passes make 2.0 the limit)")
    print(f"load average at the end {os.getloadavg()}")


if __name__ == "__main__":
    main()
