"""Benchmark: Hessian-vector products (HVPs) for the Hessian trace at 5% accuracy, Hutch++ vs Hutchinson, same run.

Models (cross-entropy, float32 products, one thread): the small CNN of ``benchmarks/sharpness.py`` (conv16-conv32-
maxpool-linear, 25 578 parameters) on its 128 seeded random 3x16x16 images, *trained* (150 full-batch SGD steps at
lr 0.05: loss 0.05, a few large eigenvalues) and at its seeded initialization; and an MLP 768-32-10 (24 938
parameters) at initialization on the same images, whose spectrum is flat.

* Exact reference: these networks are piecewise linear in each single parameter (linear/conv layers, ReLU, pooling),
  so the second-derivative term of the Hessian has a zero diagonal and ``tr H = tr G`` with ``G`` the Gauss-Newton
  matrix: ``tr H = mean_n tr(A_n J_n J_n^T)``, ``J_n`` the logits' Jacobian of sample n and ``A_n = diag(p_n) -
  p_n p_n^T`` the softmax Hessian (float64, computed with ``torch.func.jacrev``). A Hutch++ estimate is printed
  next to it, with its standard error, as a check.
* Hutchinson: ``--seeds`` seeds, each a stream of probes from ``torch.Generator().manual_seed(seed)`` -- the running
  mean after m probes *is* ``hessian_trace(..., n_samples=m, seed=seed)`` (checked once per model).
* Hutch++ at every budget m (sketch k = m // 3, r = m - 2k residual probes) from one pass per seed: a sketch of
  k_max columns, ``Q = orth(H S)`` and ``H Q`` (nested in k), and residual probes whose ``z^T H z``, ``Q^T z`` and
  ``Q^T H z`` give ``(P_k z)^T H (P_k z)`` for every k; at the largest budget it *is* ``hessian_trace(...,
  method="hutch++")`` (checked once per model).
* "HVPs at 5%": the smallest budget from which on (up to the largest observed) at least 90% of the seeds are within
  5% of the exact trace. The ratio Hutch++ / Hutchinson is printed; below 0.5 is the issue's goal.
* Spectrum facts that decide it: Hutchinson's error per probe is ``sqrt(2 sum_{i != j} H_ij^2) / tr H``; Hutch++
  removes the top of the spectrum, so it helps when the top-k eigenvalues hold most of ``||H||_F^2`` (estimated as
  the mean ``||H z||^2`` of the probes). Printed: the top eigenvalues (Lanczos), their share of the trace and of
  ``||H||_F^2``, and the per-probe spread after deflating k sketch directions.

    python benchmarks/trace.py [--quick] [--seeds N]
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import sys
import time

import torch
from torch import Tensor, nn
from torch.func import functional_call, jacrev, vmap

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sharpness import cnn_data, sgd_steps, small_cnn  # noqa: E402

from samkit.models import MLP  # noqa: E402
from samkit.sharpness import ModelObjective, hessian_trace, top_eigenvalues  # noqa: E402

F = nn.functional
ACCURACY, SHARE = 0.05, 0.9


def exact_trace(model: nn.Module, data: tuple[Tensor, Tensor]) -> float:
    """``tr H = tr(Gauss-Newton)`` for a network piecewise linear in each parameter (see the module docstring)."""
    model64 = copy.deepcopy(model).double()
    params = {k: p.detach() for k, p in model64.named_parameters()}
    x = data[0].double()

    def logits(p: dict[str, Tensor], xi: Tensor) -> Tensor:  # one sample's logits
        return functional_call(model64, p, (xi[None],))[0]

    flat = lambda j: torch.cat([t.reshape(t.shape[0], t.shape[1], -1) for t in j.values()], 2)  # noqa: E731
    jac = torch.cat([flat(vmap(jacrev(logits), (None, 0))(params, xs)) for xs in x.split(16)])  # [N, C, P]
    gram = jac @ jac.transpose(1, 2)
    n = len(x)
    with torch.no_grad():
        p = functional_call(model64, params, (x,)).softmax(-1)
    a = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    return float((a * gram).sum() / n)


def rademacher(n: int, gen: torch.Generator) -> Tensor:
    return (torch.randint(0, 2, (n,), generator=gen) * 2 - 1).float()


def hutchinson_stream(obj: ModelObjective, length: int, seed: int) -> tuple[Tensor, Tensor]:
    """Running means of ``z^T H z`` (= ``hessian_trace(n_samples=m, seed=seed)``) and the ``||H z||^2``."""
    gen = torch.Generator().manual_seed(seed)
    samples, norms = [], []
    for _ in range(length):
        z = rademacher(obj.n, gen)
        hz = obj.hvp(z)
        samples.append(float(z @ hz))
        norms.append(float(hz @ hz))
    s = torch.tensor(samples, dtype=torch.float64)
    return s.cumsum(0) / torch.arange(1, length + 1), torch.tensor(norms, dtype=torch.float64)


def hutchpp_pass(obj: ModelObjective, budget: int, seed: int) -> dict[str, Tensor]:
    """One Hutch++ run at ``budget`` (the probes of ``hessian_trace(method="hutch++", seed=seed)``), kept in parts."""
    gen = torch.Generator().manual_seed(seed)
    k = budget // 3
    y = torch.stack([obj.hvp(rademacher(obj.n, gen)) for _ in range(k)], 1)
    q, _ = torch.linalg.qr(y)
    hq = torch.stack([obj.hvp(q[:, j].contiguous()) for j in range(k)], 1)
    t = (q.T @ hq).double()
    c, a, b = [], [], []
    for _ in range(budget - 2 * k):
        z = rademacher(obj.n, gen)
        hz = obj.hvp(z)
        c.append(float(z @ hz))
        a.append((q.T @ z).double())
        b.append((q.T @ hz).double())
    return {"t": t, "c": torch.tensor(c, dtype=torch.float64), "a": torch.stack(a), "b": torch.stack(b)}


def residual_samples(run: dict[str, Tensor], k: int) -> Tensor:
    """``(P_k z)^T H (P_k z) = z^T H z - 2 (Q_k^T z).(Q_k^T H z) + (Q_k^T z)^T (Q_k^T H Q_k) (Q_k^T z)``."""
    a, b, t = run["a"][:, :k], run["b"][:, :k], run["t"][:k, :k]
    return run["c"] - 2 * (a * b).sum(1) + ((a @ t) * a).sum(1)


def hutchpp_estimates(run: dict[str, Tensor], budgets: range) -> Tensor:
    """The Hutch++ estimate at each budget m: k = m // 3 sketch columns, the first m - 2k residual probes."""
    out = []
    for m in budgets:
        k = m // 3
        out.append(float(torch.trace(run["t"][:k, :k])) + float(residual_samples(run, k)[: m - 2 * k].mean()))
    return torch.tensor(out, dtype=torch.float64)


def needed(estimates: Tensor, budgets: range, exact: float) -> int | None:
    """The smallest budget from which on >= 90% of the seeds (rows) are within 5% of ``exact``."""
    ok = ((estimates - exact).abs() <= ACCURACY * abs(exact)).double().mean(0) >= SHARE
    bad = (~ok).nonzero()
    last_bad = int(bad[-1]) if len(bad) else -1
    return None if last_bad == len(budgets) - 1 else budgets[last_bad + 1]


def check_library(model: nn.Module, data: tuple, stream: Tensor, run: dict[str, Tensor], budget: int, seed: int):
    """The observed runs equal the library's results at the same seed (relative difference)."""
    ce = F.cross_entropy
    h = hessian_trace(model, ce, [data], n_samples=20, seed=seed).trace
    p = hessian_trace(model, ce, [data], n_samples=budget, seed=seed, method="hutch++").trace
    mine = float(hutchpp_estimates(run, range(budget, budget + 1))[0])
    return abs(h / float(stream[19]) - 1), abs(p / mine - 1)


def spectrum(model: nn.Module, data: tuple, exact: float, norms: Tensor, run: dict[str, Tensor]) -> None:
    ev = top_eigenvalues(model, F.cross_entropy, [data], k=10, tol=1e-2, max_iter=300).eigenvalues.double()
    fro2 = float(norms.mean())
    hutch_spread = float(run["c"].std()) / exact
    print(f"  top-10 eigenvalues: {', '.join(f'{float(e):.3g}' for e in ev)}")
    print(
        f"  top-1 / top-10 share of the trace: {float(ev[0]) / exact:.2f} / {float(ev.sum()) / exact:.2f};"
        f" of ||H||_F^2 (~{fro2:.4g}): {float(ev[0] ** 2) / fro2:.2f} / {float((ev**2).sum()) / fro2:.2f}"
    )
    kmax = run["t"].shape[0]
    spreads = [
        f"k={k}: {float(residual_samples(run, k).std()) / exact:.3f}" for k in sorted({kmax // 8, kmax // 2, kmax})
    ]
    print(f"  error per probe / trace: Hutchinson {hutch_spread:.3f}; after deflating k sketch directions: ", end="")
    print(", ".join(spreads))


def predicted(run: dict[str, Tensor], exact: float, z: float = 1.645) -> tuple[int, int | None]:
    """HVPs at 5% in 90% of seeds predicted from the measured per-probe spreads (normal errors, ``z`` = 1.645):
    Hutchinson ``(z s_0 / 0.05)^2``; Hutch++ the smallest m with ``z s_k / sqrt(m - 2k) <= 0.05``, ``k = m // 3``
    (``s_k``: the spread of ``(P_k z)^T H (P_k z)`` / trace, measured for k up to the pass's sketch)."""
    s0 = float(run["c"].std()) / abs(exact)
    kmax = run["t"].shape[0]
    for m in range(4, 3 * kmax + 3):
        k = m // 3
        if k <= kmax and z * float(residual_samples(run, k).std()) / abs(exact) / math.sqrt(m - 2 * k) <= ACCURACY:
            return math.ceil((z * s0 / ACCURACY) ** 2), m
    return math.ceil((z * s0 / ACCURACY) ** 2), None


def measure(name: str, model: nn.Module, data: tuple, seeds: int, length: int, budget: int) -> None:
    """Exact trace, HVPs at 5% over ``seeds`` seeds (measured when there are 10 or more), predicted, spectrum."""
    t0 = time.perf_counter()
    exact = exact_trace(model, data)
    obj = ModelObjective(model, F.cross_entropy, [data])
    streams, norms, runs = [], [], []
    for seed in range(seeds):
        s, nz = hutchinson_stream(obj, length, seed)
        streams.append(s)
        norms.append(nz)
        runs.append(hutchpp_pass(obj, budget, seed))
    dh, dp = check_library(model, data, streams[0], runs[0], budget, 0)
    big = float(hutchpp_estimates(runs[0], range(budget, budget + 1))[0])
    stderr = float(residual_samples(runs[0], budget // 3).std()) / math.sqrt(budget - 2 * (budget // 3))
    print(f"{name}: exact trace {exact:.5g} (Hutch++ at {budget} HVPs, seed 0: {big:.5g} ± {stderr:.2g})")
    print(f"  same as the library at seed 0: Hutchinson (20 HVPs) rel. diff {dh:.1e}, Hutch++ {dp:.1e}")
    cap = lambda v, top: f"> {top}" if v is None else str(v)  # noqa: E731
    ratio = lambda a, b: "n/a" if a is None or b is None else f"{a / b:.2f}"  # noqa: E731
    if seeds >= 10:
        h_budgets, p_budgets = range(1, length + 1), range(4, budget + 1)
        h_need = needed(torch.stack(streams), h_budgets, exact)
        p_need = needed(torch.stack([hutchpp_estimates(r, p_budgets) for r in runs]), p_budgets, exact)
        print(
            f"  measured HVPs at 5% in >= 90% of {seeds} seeds: Hutchinson {cap(h_need, length)}, Hutch++"
            f" {cap(p_need, budget)}; ratio Hutch++/Hutchinson {ratio(p_need, h_need)} (goal <= 0.5)"
        )
    h_pred, p_pred = predicted(runs[0], exact)
    print(
        f"  predicted from seed 0's per-probe spreads: Hutchinson {h_pred}, Hutch++ {cap(p_pred, budget + 2)};"
        f" ratio {ratio(p_pred, h_pred)}"
    )
    spectrum(model, data, exact, torch.cat(norms), runs[0])
    print(f"  ({obj.n_hvp} HVPs in {time.perf_counter() - t0:.0f} s)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer seeds and shorter runs (under a minute)")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per method (default 20, --quick 10)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    seeds = args.seeds or (10 if args.quick else 20)
    data = cnn_data()
    cnn = small_cnn()
    trained = sgd_steps(cnn, data, steps=150, lr=0.05)
    torch.manual_seed(0)
    mlp = MLP(3 * 16 * 16, (32,), 10).eval()
    print(f"Hessian trace at {ACCURACY:.0%} relative accuracy in >= {SHARE:.0%} of {seeds} seeds, HVPs counted")
    measure("CNN trained (loss 0.05)", trained, data, seeds, 150 if args.quick else 200, 45 if args.quick else 60)
    measure("MLP 768-32-10 at init", mlp, data, seeds, 60, 150)
    if not args.quick:
        measure("CNN at init (spectrum account, one seed)", cnn, data, 1, 60, 300)


if __name__ == "__main__":
    main()
