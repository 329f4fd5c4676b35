"""E8's work: one full-batch training run per (method, η, ρ, seed) with λ measured along the way, and its tables.
E9 trains with the same loop (``method="unified"`` with ``lam``).

This module and what it imports are the code that computes a unit (its source is the units' cache fingerprint);
the analysis, claims and figures live elsewhere.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Mapping
from typing import Any

from samkit.experiments.base import ConfigError, Unit

_DATA_CACHE: dict[tuple[str, int], Any] = {}


def load_data(dataset: str, n: int) -> tuple[Any, Any]:
    """The first ``n`` training images, normalized and flattened, and their one-hot targets (cached per process)."""
    import torch

    from samkit.data import DataError, load_dataset

    key = (dataset, n)
    if key not in _DATA_CACHE:
        try:
            train, _ = load_dataset(dataset)
        except DataError as err:
            raise ConfigError(str(err)) from None
        sub = train.subset(n)
        x = sub.normalize(sub.images).reshape(len(sub), -1)
        y = torch.nn.functional.one_hot(sub.labels, sub.num_classes).to(x.dtype)
        _DATA_CACHE[key] = (x, y)
    return _DATA_CACHE[key]


def half_squared_error(out: Any, target: Any) -> Any:
    """½Σ_c (f_c − y_c)², averaged over the samples."""
    return 0.5 * (out - target).pow(2).sum(dim=1).mean()


def units(config: Mapping[str, Any]) -> list[Unit]:
    base = {k: config[k] for k in ("dataset", "n_train", "hidden", "eig_every", "eig_tol", "blowup")}
    out = []
    for eta, steps in zip(config["etas"], config["steps"]):
        runs = [("gd", 0.0)]
        for method in ("usam", "sam"):
            pairs = zip(config[f"{method}_etas"], config[f"{method}_rhos"])
            runs += [(method, rho) for e, rho in pairs if math.isclose(e, eta)]
        for method, rho in runs:
            for s in config["seeds"]:
                p = {**base, "method": method, "eta": eta, "rho": rho, "steps": steps, "seed": s}
                out.append(Unit(f"{method}-eta{eta:g}-r{rho:g}-s{s}", p))
    return out


def _grad_norm(model: Any) -> float:
    """‖∇L‖ over every parameter of ``model``, each holding the gradient of the closure just run."""
    import torch

    grads = []
    for p in model.parameters():
        assert p.grad is not None  # every parameter is used by the loss
        grads.append(p.grad.reshape(-1))
    return float(torch.cat(grads).norm())


def run_unit(params: Mapping[str, Any]) -> dict[str, Any]:
    import torch

    import samkit
    from samkit.sharpness import top_eigenvalues

    x, y = load_data(params["dataset"], params["n_train"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(params["seed"])
        layers: list[torch.nn.Module] = []
        width = x.shape[1]
        for h in params["hidden"]:
            layers += [torch.nn.Linear(width, h), torch.nn.Tanh()]
            width = h
        model = torch.nn.Sequential(*layers, torch.nn.Linear(width, y.shape[1]))
    method, eta, rho = params["method"], params["eta"], params["rho"]
    if method == "gd":
        opt: Any = torch.optim.SGD(model.parameters(), lr=eta)
    elif method == "usam":
        opt = samkit.USAM(model.parameters(), torch.optim.SGD, rho=rho, lr=eta)
    elif method == "unified":  # E9's dial: ε = ρ((1 − λ) g + λ g/‖g‖)
        opt = samkit.SAM(
            model.parameters(), torch.optim.SGD, rho=rho, normalization="unified", lam=params["lam"], eps=0.0, lr=eta
        )
    else:
        opt = samkit.SAM(model.parameters(), torch.optim.SGD, rho=rho, eps=0.0, lr=eta)

    def closure() -> Any:
        opt.zero_grad()
        loss = half_squared_error(model(x), y)
        loss.backward()
        return loss

    t0 = time.perf_counter()
    curve: dict[str, list] = {"step": [], "lam": [], "loss": [], "grad_norm": []}
    n_hvp, n_unconverged, diverged_step = 0, 0, None
    steps, every = params["steps"], params["eig_every"]
    for t in range(steps + 1):
        if t % every == 0 or t == steps:
            with torch.enable_grad():
                loss = float(closure().detach())
            gnorm = _grad_norm(model)
            opt.zero_grad()
            if not (math.isfinite(loss) and math.isfinite(gnorm) and loss < params["blowup"]):
                diverged_step = t
                break
            with warnings.catch_warnings():  # a non-converged estimate is counted, not printed
                warnings.simplefilter("ignore", RuntimeWarning)
                r = top_eigenvalues(model, half_squared_error, [(x, y)], k=1, method="lanczos", tol=params["eig_tol"])
            n_hvp += r.n_hvp
            n_unconverged += not r.converged
            for k, v in (("step", t), ("lam", float(r.eigenvalues[0])), ("loss", loss), ("grad_norm", gnorm)):
                curve[k].append(v)
        if t == steps:
            break
        try:
            if method == "gd":
                with torch.enable_grad():
                    loss_t = float(closure().detach())
                opt.step()
            else:
                loss_t = float(opt.step(closure).detach())
        except samkit.NonFiniteGradientError:  # SAM/USAM refuse a step on an inf/NaN gradient
            loss_t = math.inf
        if not math.isfinite(loss_t) or loss_t >= params["blowup"]:
            diverged_step = t
            break
    return {
        **curve,
        "diverged": diverged_step is not None,
        "diverged_step": diverged_step,
        "n_hvp": n_hvp,
        "eig_unconverged": n_unconverged,
        "seconds": time.perf_counter() - t0,
    }


def run_rows(key: Mapping[str, Any], params: Mapping[str, Any], r: Mapping[str, Any], sharpness: str = "lam") -> tuple:
    """One training run's row of the runs table (``key`` first) and its rows of the curves table (the top eigenvalue
    in the column ``sharpness``)."""
    run = {
        **key,
        "steps": params["steps"],
        "diverged": bool(r["diverged"]),
        "diverged_step": "" if r["diverged_step"] is None else r["diverged_step"],
        "measurements": len(r["step"]),
        "n_hvp": r["n_hvp"],
        "eig_unconverged": r["eig_unconverged"],
    }
    curves = [
        {**key, "step": step, sharpness: r["lam"][i], "loss": r["loss"][i], "grad_norm": r["grad_norm"][i]}
        for i, step in enumerate(r["step"])
    ]
    return run, curves


def run_tables(config: Mapping[str, Any], results: Mapping[str, Mapping[str, Any]]) -> dict[str, list[dict]]:
    runs, curves = [], []
    for unit in units(config):
        p = unit.params
        key = {"method": p["method"], "eta": p["eta"], "rho": p["rho"], "seed": p["seed"]}
        run, rows = run_rows(key, p, results[unit.key])
        runs.append(run)
        curves += rows
    return {"runs": runs, "curves": curves}
