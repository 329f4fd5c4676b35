"""Benchmark: the top Hessian eigenvalue at equal accuracy, samkit vs PyHessian, in the same run (numbers only).

Small CNNs (conv16-conv32-pool-linear, 25 578 parameters; average pooling: a clear top eigenvalue, λ2/λ1 ≈ 0.76; max
pooling: a near-degenerate top pair, λ2/λ1 ≈ 0.98) at their seeded initialization, cross-entropy on 128 seeded random
3x16x16 images, float32, one thread. The reference is samkit's Lanczos in float64 at ``tol=1e-10``.

* PyHessian (``pip install --no-deps pyhessian``; skipped with a message when absent): its power iteration from its
  own random start (``torch.manual_seed(seed)``), observed product by product: the fewest iterations whose
  estimate is within ``--accuracy`` (default 1e-3, relative) of the reference; then timed alone at exactly that many
  iterations (its setup, the first-order graph it keeps, included).
* samkit: ``top_eigenvalues`` (its default start: the gradient plus a random vector) at the largest ``tol`` of a
  ladder whose result is within the same accuracy, timed the same way (building the objective included); at its
  default ``tol=1e-3`` for the record; and from a random start (``start="random"``).
* Warm start (monitoring during training): after a full-batch SGD step at lr 0.01 and after 5 at lr 0.1, samkit
  started from the previous top eigenvector (``v0``) against a cold start and against PyHessian (no warm start).

Ratios are medians over ``--seeds`` random starts. ``--hvp`` also times the Hessian-vector product implementations;
``--resnet`` runs the older ResNet-20 Lanczos-vs-power comparison.

    python benchmarks/sharpness.py [--quick] [--hvp] [--resnet]
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
import warnings

import torch
from torch import nn
from torch.func import functional_call, grad, jvp

from samkit.models import MLP, ResNet20
from samkit.sharpness import ModelObjective, lanczos, power_iteration, top_eigenvalues

F = nn.functional
TOLS = (3e-2, 1e-2, 5e-3, 2e-3, 1e-3, 5e-4, 2e-4, 1e-4, 3e-5, 1e-5, 1e-6, 1e-7)


class Found(Exception):
    """Stops an observed PyHessian run once it is accurate enough."""


def small_cnn(seed: int = 0, pool: type[nn.Module] = nn.MaxPool2d) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        pool(2),
        nn.Flatten(),
        nn.Linear(32 * 8 * 8, 10),
    ).eval()


def cnn_data(n: int = 128, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 16, 16, generator=g), torch.randint(0, 10, (n,), generator=g)


def reference(model: nn.Module, data: tuple) -> tuple[float, torch.Tensor]:
    r = top_eigenvalues(model, F.cross_entropy, [data], tol=1e-10, dtype=torch.float64, seed=12345)
    return float(r.eigenvalues[0]), r.eigenvectors[0].float()


def pyhessian_needs(model: nn.Module, data: tuple, lam: float, accuracy: float, seed: int, cap: int) -> int | None:
    """The fewest PyHessian power iterations within ``accuracy`` of ``lam`` (None: not within ``cap``)."""
    import pyhessian  # noqa: F401

    ph = sys.modules["pyhessian.hessian"]  # the module (the package exports its class under the same name)
    original, count = ph.hessian_vector_product, [0]

    def observed(gradsH, params, v):  # v is PyHessian's current unit iterate; its estimate is <Hv, v>
        hv = original(gradsH, params, v)
        count[0] += 1
        estimate = float(sum((a * b).sum() for a, b in zip(hv, v)))
        if abs(estimate - lam) <= accuracy * abs(lam):
            raise Found
        return hv

    ph.hessian_vector_product = observed
    try:
        h = ph.hessian(copy.deepcopy(model), nn.CrossEntropyLoss(), data=data, cuda=False)
        torch.manual_seed(seed)
        h.eigenvalues(maxIter=cap, tol=0.0)
        return None
    except Found:
        return count[0]
    finally:
        ph.hessian_vector_product = original


def pyhessian_time(model: nn.Module, data: tuple, iters: int, seed: int) -> tuple[float, float]:
    from pyhessian import hessian

    t0 = time.perf_counter()
    h = hessian(copy.deepcopy(model), nn.CrossEntropyLoss(), data=data, cuda=False)
    torch.manual_seed(seed)
    ev, _ = h.eigenvalues(maxIter=iters, tol=0.0)
    return time.perf_counter() - t0, float(ev[0])


def samkit_at(
    model: nn.Module, data: tuple, tol: float, seed: int, v0: torch.Tensor | None = None, start: str = "gradient"
):
    t0 = time.perf_counter()
    r = top_eigenvalues(model, F.cross_entropy, [data], tol=tol, seed=seed, v0=v0, start=start, max_iter=400)
    return time.perf_counter() - t0, r


def samkit_needs(model, data, lam, accuracy, seed, v0=None, start="gradient"):
    """The largest tol of the ladder whose result is within ``accuracy``: (tol, seconds, result)."""
    for tol in TOLS:
        secs, r = samkit_at(model, data, tol, seed, v0, start)
        if abs(float(r.eigenvalues[0]) - lam) <= accuracy * abs(lam):
            return tol, secs, r
    return None, secs, r


def sgd_steps(model: nn.Module, data: tuple, steps: int = 5, lr: float = 0.1) -> nn.Module:
    moved = copy.deepcopy(model)
    opt = torch.optim.SGD(moved.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(moved(data[0]), data[1]).backward()
        opt.step()
    opt.zero_grad(set_to_none=True)
    return moved.eval()


def compare_with_pyhessian(seeds: int, accuracy: float, cap: int) -> None:
    try:
        import pyhessian  # noqa: F401
    except ImportError:
        print("PyHessian is not installed (pip install --no-deps pyhessian): the comparison is skipped")
        return
    warnings.filterwarnings("ignore", category=UserWarning, module="torch")  # PyHessian's deprecated calls
    data = cnn_data()
    for pool in (nn.AvgPool2d, nn.MaxPool2d):
        model = small_cnn(pool=pool)
        cold_start(model, data, seeds, accuracy, cap, pool.__name__)
    warm_start(model, data, seeds, accuracy, cap)


def cold_start(model: nn.Module, data: tuple, seeds: int, accuracy: float, cap: int, name: str) -> None:
    lam, _ = reference(model, data)
    lam2 = float(top_eigenvalues(model, F.cross_entropy, [data], k=2, tol=1e-8, dtype=torch.float64).eigenvalues[1])
    print(
        f"small CNN ({name}), {sum(p.numel() for p in model.parameters())} parameters, 128 images; lambda_max = "
        f"{lam:.6f}, lambda_2 / lambda_max = {lam2 / lam:.3f}"
    )
    print(
        f"  {'seed':>4} {'PyH HVPs':>8} {'PyH s':>7} {'tol':>7} {'HVPs':>5} {'s':>6} {'err':>8} {'@1e-3: HVPs':>11} "
        f"{'err':>8} {'random start: tol':>17} {'HVPs':>5}"
    )
    hvp_ratios, time_ratios, rnd_ratios, misses = [], [], [], 0
    for seed in range(seeds):
        k = pyhessian_needs(model, data, lam, accuracy, seed, cap)
        if k is None:
            print(f"  {seed:>4} PyHessian not within {accuracy} in {cap} iterations")
            continue
        t_ph, _ = pyhessian_time(model, data, k, seed)
        tol, t_sk, r = samkit_needs(model, data, lam, accuracy, seed)
        _, r_def = samkit_at(model, data, 1e-3, seed)
        err = abs(float(r.eigenvalues[0]) - lam) / lam
        err_def = abs(float(r_def.eigenvalues[0]) - lam) / lam
        tol_r, _, r_r = samkit_needs(model, data, lam, accuracy, seed, start="random")
        print(
            f"  {seed:>4} {k:>8} {t_ph:>7.2f} {tol!s:>7} {r.n_hvp:>5} {t_sk:>6.2f} {err:>8.1e} {r_def.n_hvp:>11} "
            f"{err_def:>8.1e} {tol_r!s:>17} {r_r.n_hvp:>5}"
        )
        if tol_r is not None:
            rnd_ratios.append(r_r.n_hvp / k)
        if tol is None:  # settled on the second eigenvalue at every tol (see samkit.sharpness.eigen)
            misses += 1
            continue
        hvp_ratios.append(r.n_hvp / k)
        time_ratios.append(t_sk / t_ph)
    if hvp_ratios:
        print(
            f"  cold start, accuracy {accuracy}: samkit / PyHessian = {statistics.median(hvp_ratios):.2f}x the HVPs "
            f"(goal <= 0.5), {statistics.median(time_ratios):.2f}x the time (goal <= 0.7); medians of the "
            f"{len(hvp_ratios)} seeds where samkit reached the accuracy ({misses} where it settled on the second "
            "eigenvalue at every tol: tol None above)"
        )
    if rnd_ratios:
        print(f"  from a random start (start='random'): {statistics.median(rnd_ratios):.2f}x the HVPs")


def warm_start(model: nn.Module, data: tuple, seeds: int, accuracy: float, cap: int) -> None:
    """Monitoring: a few SGD steps later, samkit from the previous top eigenvector (v0) vs cold vs PyHessian."""
    lam, vec = reference(model, data)
    for steps, lr in ((1, 0.01), (5, 0.1)):
        moved = sgd_steps(model, data, steps, lr)
        lam1, vec1 = reference(moved, data)
        warm, cold, grad_start, ph = [], [], [], []
        for seed in range(seeds):
            warm.append(samkit_needs(moved, data, lam1, accuracy, seed, v0=vec)[2].n_hvp)
            cold.append(samkit_needs(moved, data, lam1, accuracy, seed, start="random")[2].n_hvp)
            grad_start.append(samkit_needs(moved, data, lam1, accuracy, seed)[2].n_hvp)
            k = pyhessian_needs(moved, data, lam1, accuracy, seed, cap)
            ph.append(k if k is not None else cap)
        w, c, gs, p = (statistics.median(x) for x in (warm, cold, grad_start, ph))
        print(
            f"after {steps} SGD step(s) at lr {lr} (lambda_max {lam:.3f} -> {lam1:.3f}, top eigenvector overlap "
            f"{abs(float(vec @ vec1)):.2f}), HVPs for accuracy {accuracy} (medians): samkit from the previous "
            f"eigenvector {w}, from the gradient {gs}, from a random vector {c}, PyHessian {p}: "
            f"previous eigenvector / PyHessian = {w / p:.2f}x"
        )


def time_hvp_impls() -> None:
    """Per product: recompute (forward + double backward), the kept first-order graph, torch.func forward-over-reverse."""

    def compare(name: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, reps: int) -> None:
        model.eval()
        recompute = ModelObjective(model, F.cross_entropy, [(x, y)], reuse_graph=False)
        kept = ModelObjective(model, F.cross_entropy, [(x, y)], reuse_graph=True)
        v = torch.randn(recompute.n)
        kept.hvp(v)  # builds the graph

        def func_hvp() -> torch.Tensor:
            def loss(w: torch.Tensor) -> torch.Tensor:
                parts = zip(recompute.names, torch.split(w, recompute.numels), recompute.shapes)
                params = {k: t.view(s) for k, t, s in parts}
                return F.cross_entropy(functional_call(model, {**params, **recompute._consts}, (x,)), y)

            return jvp(grad(loss), (recompute.w0,), (v,))[1]

        impls = {"recompute": lambda: recompute.hvp(v), "kept graph": lambda: kept.hvp(v), "torch.func": func_hvp}
        times: dict[str, list[float]] = {k: [] for k in impls}
        for _ in range(reps):
            for label, fn in impls.items():
                t0 = time.perf_counter()
                fn()
                times[label].append(time.perf_counter() - t0)
        med = {k: statistics.median(t) * 1e3 for k, t in times.items()}
        print(
            f"  {name:<32} recompute {med['recompute']:7.1f} ms  kept graph {med['kept graph']:7.1f} ms  "
            f"torch.func {med['torch.func']:7.1f} ms"
        )

    torch.manual_seed(0)
    print("Hessian-vector product implementations (median time per product):")
    x, y = cnn_data()
    compare("small CNN, 128 images 16x16", small_cnn(), x, y, 7)
    compare("MLP 784-256-256-10, 512 samples", MLP(784), torch.randn(512, 784), torch.randint(0, 10, (512,)), 9)


def resnet_lanczos_vs_power(n_images: int, tol: float) -> None:
    """ResNet-20 at its calibrated initialization (eval-mode BN), random images: Lanczos vs power iteration."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n_images, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (n_images,), generator=g)
    batches = [(x[i : i + 128], y[i : i + 128]) for i in range(0, n_images, 128)]
    torch.manual_seed(0)
    model = ResNet20()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None
    with torch.no_grad():
        for xb, _ in batches:
            model(xb)
    model.eval()
    obj = ModelObjective(model, F.cross_entropy, batches)
    print(f"ResNet-20, {obj.n} parameters, {n_images} images, tol {tol}")
    for name, solver in (("lanczos", lanczos), ("power", power_iteration)):
        t0 = time.perf_counter()
        r = solver(obj.hvp, obj.n, 1, tol=tol, dtype=obj.dtype)
        print(f"  {name:<8} lambda_max {float(r.eigenvalues[0]):.6f}, {r.n_hvp} HVPs, {time.perf_counter() - t0:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 seeds instead of 5")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--accuracy", type=float, default=1e-3)
    parser.add_argument("--cap", type=int, default=400, help="most PyHessian iterations observed")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--hvp", action="store_true", help="also time the Hessian-vector product implementations")
    parser.add_argument("--resnet", action="store_true", help="also run ResNet-20 Lanczos vs power (minutes)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), load average {os.getloadavg()}")
    if args.hvp:
        time_hvp_impls()
    compare_with_pyhessian(3 if args.quick else args.seeds, args.accuracy, args.cap)
    if args.resnet:
        resnet_lanczos_vs_power(128, 1e-3)
    print(f"load average at the end {os.getloadavg()}")


if __name__ == "__main__":
    main()
