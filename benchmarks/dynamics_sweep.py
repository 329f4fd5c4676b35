"""Benchmark of the batched dynamics lab (prints numbers; no assertions on time).

1. A 256×256 (η, ρ) SAM and USAM phase diagram on a d = 10 quadratic, 2000 steps, in one batched call.
2. The same configurations run one at a time in a Python loop (timed on a sample, scaled) and the ratio.
   Goal: ≥ 100× and ≤ 10 s for the batched sweep on 2 cores.
3. Time per step of a batch of 64 matrix-sensing configurations at d = 100 (SAM).

Run: ``python benchmarks/dynamics_sweep.py`` (``--quick`` for a smaller, faster version).
"""

from __future__ import annotations

import argparse
import time

import torch

from samkit.core import perturb_batched, resolve_lam
from samkit.dynamics import MatrixSensing, Quadratic, simulate, theory


def per_config_loop(problem: Quadratic, method: str, eta: float, rho: float, x0: torch.Tensor, steps: int) -> bool:
    """The baseline: one configuration, the same rule through samkit.core, in a plain Python loop."""
    x = x0.clone().unsqueeze(0)
    lam = resolve_lam("l2" if method == "sam" else "none", None)
    r = torch.tensor([rho], dtype=torch.float64)
    for _ in range(steps):
        g = problem._grad(x)
        xn = x - eta * problem._grad(x + perturb_batched(g, r, lam, 0.0))
        if not torch.isfinite(xn).all() or float(xn.norm()) > 1e100:
            return True
        x = xn
    return False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="64×64 grid, 500 steps, 4 d=100 matrix-sensing configs")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    n, steps = (64, 500) if args.quick else (256, 2000)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")

    eigs = torch.logspace(0, 1, 10, dtype=torch.float64)  # β = 10, μ = 1
    q = Quadratic(eigs)  # diagonal: GD/SAM/USAM are rotation-equivariant, so this loses no generality
    x0 = torch.ones(10, dtype=torch.float64)
    etas = torch.linspace(0.0, 0.25, n + 1, dtype=torch.float64)[1:]
    rhos = torch.logspace(-3, 1, n, dtype=torch.float64)
    E, R = torch.meshgrid(etas, rhos, indexing="ij")
    B = E.numel()

    for method in ("sam", "usam"):
        t0 = time.perf_counter()
        res = simulate(q, method, E, R, x0=x0, steps=steps, record=("loss",), record_every=steps)
        tb = time.perf_counter() - t0
        frac = res.diverged.double().mean().item()
        if method == "usam":
            pred = E.reshape(-1) > theory.usam_threshold(q.beta, R.reshape(-1))
        else:
            pred = E.reshape(-1) > theory.gd_threshold(q.beta)
        agree = (pred == res.diverged).double().mean().item()
        print(
            f"{method}: {n}x{n} grid ({B} configs) x {steps} steps batched: {tb:.2f} s "
            f"({tb / steps * 1e3:.2f} ms/step); diverged {frac:.3f}; agrees with theory on {agree:.4f} of the grid"
        )

        # baseline: per-configuration loop on a sample, scaled
        g = torch.Generator().manual_seed(0)
        sample = torch.randint(0, B, (8 if not args.quick else 4,), generator=g)
        t0 = time.perf_counter()
        for i in sample.tolist():
            per_config_loop(q, method, float(E.reshape(-1)[i]), float(R.reshape(-1)[i]), x0, steps)
        tl = (time.perf_counter() - t0) / len(sample) * B
        print(
            f"{method}: per-configuration loop, {len(sample)} sampled, scaled to {B}: {tl:.1f} s; ratio {tl / tb:.0f}x"
        )

    # matrix sensing, batch of 64 at d = 100
    d, batch, ms_steps = (100, 4 if args.quick else 64, 3)
    t0 = time.perf_counter()
    p = MatrixSensing(d=d, r=5, seed=0)
    tsetup = time.perf_counter() - t0
    U0 = p.init(0.3, kind="random", seed=1, batch=batch)
    rho = torch.logspace(-3, -1, batch, dtype=torch.float64)
    simulate(p, "sam", 0.05, rho, x0=U0, steps=1, record=("loss",))  # warm-up
    t0 = time.perf_counter()
    res = simulate(p, "sam", 0.05, rho, x0=U0, steps=ms_steps, record=("loss",), record_every=ms_steps)
    tm = (time.perf_counter() - t0) / ms_steps
    print(
        f"matrix sensing d={d}, m={p.m}, batch {batch}: setup {tsetup:.2f} s, SAM {tm:.3f} s/step "
        f"({tm / batch * 1e3:.1f} ms per config-step); final loss median {res.final_loss.median().item():.3g}"
    )


if __name__ == "__main__":
    main()
