"""Benchmark of the batched dynamics lab (prints numbers and ratios measured in the same run; no assertions on time).

1. A 256×256 (η, ρ) SAM and USAM phase diagram on a d = 10 quadratic, 2000 steps, in one batched call, with the
   fused (compiled) engine and the eager one; the floor is one in-place read-modify-write of the same state
   (``[10, 65536]`` float64) per step, over the same number of steps. Goals: SAM ≤ 3 s and ≤ 10× the floor.
   The two engines' results are compared (divergence steps, final iterates).
2. The same configurations run one at a time in a Python loop (timed on a sample, scaled) and the ratio.
3. Time per step of a batch of 64 matrix-sensing configurations at d = 100 (SAM).

Fused and floor timings are medians of ``--repeat`` runs (the machine is shared); compilation (the first call) is
timed separately. With one thread the clock is the thread's CPU time (``time.thread_time``: waiting for a core on a
loaded machine is not counted; contention for memory still is). For SAM, a breakdown of fused / floor follows:
engine bookkeeping (simulate around the compiled step), per-call overhead (the compiled step on 16 configurations),
subnormal arithmetic (the same compiled step with ``torch.set_flush_denormal(True)``, a measurement only: simulate
never flushes) and the step's own kernel.

Run: ``python benchmarks/dynamics_sweep.py`` (``--quick`` for a smaller, faster version).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from samkit.core import perturb_batched, resolve_lam
from samkit.dynamics import MatrixSensing, Quadratic, simulate, theory
from samkit.dynamics.simulate import _compiled, _range_scale, update

CLOCK = time.thread_time


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


def floor(shape: tuple[int, int], steps: int) -> float:
    """One in-place read-modify-write of a state of this shape per step."""
    x = torch.ones(shape, dtype=torch.float64)
    t0 = CLOCK()
    for _ in range(steps):
        x.mul_(0.999)
    return CLOCK() - t0


def kernel_loop(q: Quadratic, eta: torch.Tensor, rho: torch.Tensor, steps: int, flush: bool = False) -> float:
    """The compiled fast SAM step of the fused engine called ``steps`` times on ``[d, B]``, with its host check (what
    simulate runs, without its bookkeeping); ``flush``: with denormals flushed to zero (a measurement only)."""
    B, d = eta.numel(), q.shape[0]
    x = torch.ones(d, B, dtype=torch.float64).t()
    alive = torch.ones(B, dtype=torch.float64)
    at, t = -alive, torch.zeros((), dtype=torch.float64)
    scale = _range_scale(1e100)
    consts = [torch.tensor(v, dtype=torch.float64) for v in (1e100 / d**0.5, scale, scale * 1e100)]
    step = _compiled(False, d)
    step(q, x.clone(), eta.reshape(-1, 1), rho, alive, at, None, t, *consts, 1.0, 0.0)  # compiled for these shapes
    flushed = flush and torch.set_flush_denormal(True)
    try:
        t0 = CLOCK()
        for _ in range(steps):
            out = step(q, x, eta.reshape(-1, 1), rho, alive, at, None, t, *consts, 1.0, 0.0)
            out.inexact.item()
            alive, at, t = out.alive, out.diverged_at, out.t
        return CLOCK() - t0
    finally:
        if flushed:
            torch.set_flush_denormal(False)


def breakdown(q: Quadratic, E: torch.Tensor, R: torch.Tensor, steps: int, fused: float, repeat: int) -> None:
    """Where SAM's fused / floor goes, each part as a multiple of the floor, measured in this run (medians)."""
    B = E.numel()
    eta, rho = E.reshape(-1), R.reshape(-1)
    parts: dict[str, list[float]] = {k: [] for k in ("floor", "kernel", "flushed", "tiny")}
    for _ in range(repeat):
        parts["floor"].append(floor((10, B), steps))
        parts["kernel"].append(kernel_loop(q, eta, rho, steps))
        parts["flushed"].append(kernel_loop(q, eta, rho, steps, flush=True))
        parts["tiny"].append(kernel_loop(q, eta[:16].clone(), rho[:16].clone(), steps))
    m = {k: statistics.median(v) for k, v in parts.items()}
    f = m["floor"]
    print(
        f"sam breakdown (x floor, floor {f:.3f} s): fused simulate {fused / f:.1f} = bookkeeping "
        f"{(fused - m['kernel']) / f:.1f} + subnormal arithmetic {(m['kernel'] - m['flushed']) / f:.1f} + per-call "
        f"overhead {m['tiny'] / f:.1f} + the step's kernel {(m['flushed'] - m['tiny']) / f:.1f}"
    )


def rowwise(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b).norm(dim=1) / a.norm(dim=1).clamp_min(1e-300)).max())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="64×64 grid, 500 steps, 4 d=100 matrix-sensing configs")
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1: a fixed count)")
    ap.add_argument("--repeat", type=int, default=3, help="runs of the fused engine and the floor (medians)")
    ap.add_argument("--no-eager", action="store_true", help="skip the eager engine (slow) and the comparison")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    global CLOCK
    CLOCK = time.thread_time if args.threads == 1 else time.perf_counter
    n, steps = (64, 500) if args.quick else (256, 2000)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, load average {os.getloadavg()}")

    eigs = torch.logspace(0, 1, 10, dtype=torch.float64)  # β = 10, μ = 1
    q = Quadratic(eigs)  # diagonal: GD/SAM/USAM are rotation-equivariant, so this loses no generality
    x0 = torch.ones(10, dtype=torch.float64)
    etas = torch.linspace(0.0, 0.25, n + 1, dtype=torch.float64)[1:]
    rhos = torch.logspace(-3, 1, n, dtype=torch.float64)
    E, R = torch.meshgrid(etas, rhos, indexing="ij")
    B = E.numel()
    kw = dict(x0=x0, steps=steps, record=("loss",), record_every=steps)

    for method in ("sam", "usam"):
        t0 = time.perf_counter()
        simulate(q, method, E, R, x0=x0, steps=2, record=(), fused=True)  # compiles the step for these shapes
        t_compile = time.perf_counter() - t0  # wall clock: compilation runs in other processes too
        fused_t, floor_t = [], []
        for _ in range(args.repeat):
            floor_t.append(floor((10, B), steps))
            t0 = CLOCK()
            res = simulate(q, method, E, R, fused=True, **kw)
            fused_t.append(CLOCK() - t0)
        tf, tfl = statistics.median(fused_t), statistics.median(floor_t)
        frac = res.diverged.double().mean().item()
        if method == "usam":
            pred = E.reshape(-1) > theory.usam_threshold(q.beta, R.reshape(-1))
        else:
            pred = E.reshape(-1) > theory.gd_threshold(q.beta)
        agree = (pred == res.diverged).double().mean().item()
        print(
            f"{method}: {n}x{n} grid ({B} configs) x {steps} steps, fused: {tf:.2f} s ({tf / steps * 1e3:.2f} ms/step; "
            f"runs {', '.join(f'{t:.2f}' for t in fused_t)}; compile {t_compile:.1f} s); diverged {frac:.3f}; "
            f"agrees with theory on {agree:.4f} of the grid"
        )
        print(f"{method}: floor (in-place pass over [10, {B}] per step) {tfl:.3f} s; fused / floor = {tf / tfl:.1f}x")
        alive = ~res.diverged
        fixed = (
            update(
                q,
                res.final[alive],
                E.reshape(-1, 1)[alive],
                R.reshape(-1)[alive],
                resolve_lam("l2" if method == "sam" else "none", None),
                0.0,
            )
            == res.final[alive]
        ).all(1)
        print(f"{method}: configurations at an exact fixed point at the end (freezable): {int(fixed.sum())} of {B}")
        if not args.no_eager:
            t0 = CLOCK()
            ref = simulate(q, method, E, R, fused=False, **kw)
            te = CLOCK() - t0
            same = torch.equal(ref.diverged_at, res.diverged_at)
            loss = rowwise(ref.final_loss.unsqueeze(1), res.final_loss.unsqueeze(1))
            print(
                f"{method}: eager {te:.2f} s; eager / fused = {te / tf:.1f}x; eager / floor = {te / tfl:.1f}x; "
                f"same divergence steps: {same}; final iterates agree to {rowwise(ref.final, res.final):.1e} "
                f"(rowwise), final losses to {loss:.1e}"
            )
        if method == "sam":
            breakdown(q, E, R, steps, tf, args.repeat)

        # baseline: per-configuration loop on a sample, scaled
        g = torch.Generator().manual_seed(0)
        sample = torch.randint(0, B, (8 if not args.quick else 4,), generator=g)
        t0 = time.perf_counter()
        for i in sample.tolist():
            per_config_loop(q, method, float(E.reshape(-1)[i]), float(R.reshape(-1)[i]), x0, steps)
        tl = (time.perf_counter() - t0) / len(sample) * B
        print(
            f"{method}: per-configuration loop, {len(sample)} sampled, scaled to {B}: {tl:.1f} s; ratio {tl / tf:.0f}x"
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
    print(f"load average at the end {os.getloadavg()}")


if __name__ == "__main__":
    main()
