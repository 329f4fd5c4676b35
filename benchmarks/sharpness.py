"""Benchmark: top Hessian eigenvalue of ResNet-20 by Lanczos vs power iteration, same run, same data.

ResNet-20 (``samkit.models.ResNet20``) at its seeded initialization, BatchNorm statistics calibrated on the data and
then evaluated in eval mode (the toolkit's default), cross-entropy on 512 seeded random 3x32x32 images with random
labels, in batches of 128 (every Hessian-vector product is exact over all 512 images). Both methods stop at
``--tol`` (default 1e-3) by their own rules (see ``samkit.sharpness.eigen``); the printed accuracy of each result is
measured against a tighter Lanczos reference (``--no-reference`` skips it). No assertions: numbers only.

    python benchmarks/sharpness.py            # 512 images (several minutes on 2 CPU cores)
    python benchmarks/sharpness.py --quick    # 128 images
    python benchmarks/sharpness.py --hvp      # also time double backward vs torch.func Hessian-vector products
"""

from __future__ import annotations

import argparse
import platform
import time

import torch
from torch import nn
from torch.func import functional_call, grad, jvp

from samkit.models import MLP, ResNet20
from samkit.sharpness import ModelObjective, lanczos, power_iteration

F = nn.functional


def make_data(n_images: int, batch_size: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_images, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (n_images,), generator=g)
    return [(x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, n_images, batch_size)]


def calibrated_resnet(batches: list, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = ResNet20()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None  # cumulative average over the calibration pass
    model.train()
    with torch.no_grad():
        for x, _ in batches:
            model(x)
    return model.eval()


def time_hvp_impls() -> None:
    """Double backward (what samkit uses) vs torch.func forward-over-reverse, median of a few products."""

    def compare(name: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, reps: int) -> None:
        model.eval()
        obj = ModelObjective(model, F.cross_entropy, [(x, y)])
        v = torch.randn(obj.n)

        def func_hvp() -> torch.Tensor:
            def loss(w: torch.Tensor) -> torch.Tensor:
                parts = zip(obj.names, torch.split(w, obj.numels), obj.shapes)
                params = {k: t.view(s) for k, t, s in parts}
                return F.cross_entropy(functional_call(model, {**params, **obj._consts}, (x,)), y)

            return jvp(grad(loss), (obj.w0,), (v,))[1]

        times: dict[str, list[float]] = {"double backward": [], "torch.func": []}
        for _ in range(reps):
            for label, fn in (("double backward", lambda: obj.hvp(v)), ("torch.func", func_hvp)):
                t0 = time.perf_counter()
                fn()
                times[label].append(time.perf_counter() - t0)
        med = {k: sorted(t)[len(t) // 2] for k, t in times.items()}
        print(
            f"  {name:<34} double backward {med['double backward'] * 1e3:8.1f} ms   torch.func "
            f"{med['torch.func'] * 1e3:8.1f} ms   ratio func/double {med['torch.func'] / med['double backward']:.2f}"
        )

    torch.manual_seed(0)
    print("HVP implementation (median time per product):")
    compare("MLP 784-256-256-10, 512 samples", MLP(784), torch.randn(512, 784), torch.randint(0, 10, (512,)), 9)
    compare("ResNet-20, 128 images 32x32", ResNet20(), torch.randn(128, 3, 32, 32), torch.randint(0, 10, (128,)), 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="128 images instead of 512")
    parser.add_argument("--n-images", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--tol", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-reference", action="store_true", help="skip the tight Lanczos reference")
    parser.add_argument("--hvp", action="store_true", help="also time double backward vs torch.func")
    args = parser.parse_args()
    n_images = 128 if args.quick else args.n_images
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    if args.hvp:
        time_hvp_impls()

    batches = make_data(n_images, args.batch_size, args.seed)
    model = calibrated_resnet(batches, args.seed)
    obj = ModelObjective(model, F.cross_entropy, batches)
    print(
        f"ResNet-20, {obj.n} parameters, {n_images} images in batches of {args.batch_size}, eval-mode BN, tol {args.tol}"
    )
    t0 = time.perf_counter()
    obj.hvp(torch.ones(obj.n))  # warm-up
    print(f"  one Hessian-vector product over all images: {time.perf_counter() - t0:.2f} s (warm-up)")

    results = {}
    for name, solver in (("lanczos", lanczos), ("power", power_iteration)):
        t0 = time.perf_counter()
        r = solver(obj.hvp, obj.n, 1, tol=args.tol, seed=args.seed, dtype=obj.dtype)
        results[name] = (r, time.perf_counter() - t0)
    ref = None
    if not args.no_reference:
        t0 = time.perf_counter()
        ref_r = lanczos(obj.hvp, obj.n, 1, tol=1e-7, seed=args.seed + 1, dtype=obj.dtype)
        ref = float(ref_r.eigenvalues[0])
        print(
            f"  reference (Lanczos, tol 1e-7, other seed): lambda_max = {ref:.6f}, {ref_r.n_hvp} HVPs, "
            f"{time.perf_counter() - t0:.1f} s"
        )
    print(f"  {'method':<8} {'lambda_max':>12} {'rel.err':>9} {'residual':>9} {'HVPs':>5} {'time s':>8} {'s/HVP':>6}")
    for name, (r, secs) in results.items():
        lam = float(r.eigenvalues[0])
        err = f"{abs(lam - ref) / abs(ref):9.1e}" if ref is not None else f"{'-':>9}"
        print(
            f"  {name:<8} {lam:12.6f} {err} {float(r.residuals[0]) / abs(lam):9.1e} {r.n_hvp:5d} {secs:8.1f} "
            f"{secs / r.n_hvp:6.2f}"
        )
    (lz, t_lz), (pw, t_pw) = results["lanczos"], results["power"]
    print(
        f"  Lanczos / power: time {t_lz / t_pw:.2f}x, HVPs {lz.n_hvp}/{pw.n_hvp} = {lz.n_hvp / pw.n_hvp:.2f}x (goal <= 0.5x)"
    )


if __name__ == "__main__":
    main()
