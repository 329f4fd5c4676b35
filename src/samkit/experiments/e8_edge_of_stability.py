"""E8 — the edge of stability in a deep network follows Theorem 1's threshold.

With full-batch steps of size η, the top Hessian eigenvalue λ of a network's training loss rises
("progressive sharpening") until it reaches the largest curvature the optimizer can sustain, and then hovers
there: 2/η for GD (the edge of stability, Cohen et al. 2021). Theorem 1 says USAM near a minimum is GD on the
curvature λ + ρλ², stable iff η(λ + ρλ²) < 2, so USAM should hover at the root of ρλ² + λ = 2/η,

    λ* = (−1 + √(1 + 8ρ/η)) / (2ρ)  (:func:`stability_edge`),

well below 2/η, while SAM, whose perturbation ρ g/‖g‖ acts on the curvature as (ρ/‖g‖)λ², hovers at the
‖g_t‖-dependent edge λ(1 + ρλ/‖g_t‖) = 2/η (Long & Bartlett 2023), i.e. :func:`stability_edge` at ρ/‖g_t‖.

Setting: a tanh MLP 784-128-128-10 (PyTorch's default initialization under the run's seed) on the first 1 000
Fashion-MNIST training images, loss ½Σ_c (f_c − y_c)² on one-hot targets averaged over the images, full-batch
steps of plain SGD (no momentum) as the base optimizer; USAM = :class:`samkit.USAM`, SAM = :class:`samkit.SAM`
with ``eps=0``. Every ``eig_every`` steps λ is measured by Lanczos
(:func:`samkit.sharpness.top_eigenvalues`, relative tolerance ``eig_tol``) together with the loss and the
full-batch ‖g_t‖; the plateau of a run is the mean of λ over the measurements in the last third of its steps.
One training run is one cached work unit. Claims, computed from the saved curves:

* E8.1 (control): GD's plateau / (2/η) ∈ [0.95, 1.05] at every η and seed — if this fails low, the run was too
  short for sharpening to reach the edge;
* E8.2: USAM's plateau / λ* ∈ [0.95, 1.05] for every (η, ρ, seed);
* E8.3: USAM's plateaus are ≤ 0.85 × 2/η (they are not GD's edge) and strictly decrease in ρ at fixed η and seed;
* E8.4: SAM's plateau is ≤ 0.6 × 2/η and its λ_t stays at the ‖g_t‖-dependent edge: the mean of λ_t / edge_t over
  the last third is within ±7% of 1.

Each claim first checks in the data that its mechanism was put to work (a precondition) and is reported NOT
EXERCISED otherwise: every run it uses finished finite (no divergence) and is stable (last-third std/mean ≤
``stable_cv``); GD at the same η reached its own edge (plateau ≥ (1 − ``plateau_tol``) · 2/η, else the runs were
too short to say anything); and for USAM the measured initial λ lies below λ* by more than the tolerance (else
there is no approach from below and "hovering at λ*" could be a run that never moved). The static part is checked
when the config is made: a (η, ρ) whose λ* is not clearly between the initial λ (``lambda_init_bound``, a
conservative bound: 34–40 measured on this MLP) and 2/η (at most ``max_edge_fraction`` · 2/η: a tiny ρ is
indistinguishable from GD) is refused with a :class:`~samkit.experiments.ConfigError`.

Presets: ``quick`` is one η = 0.03 (2 000 steps, λ every 100 steps), GD + USAM ρ ∈ {0.005, 0.01} + SAM ρ = 0.01,
seed 0 (4 runs, ≈ 3.5 CPU-minutes on one thread); ``full`` is the prototype's grid: η ∈ {0.02 (4 000 steps),
0.03 (3 000 steps)}, USAM ρ ∈ {0.005, 0.01, 0.02} at 0.02 and {0.005, 0.01} at 0.03, SAM ρ = 0.01 at η = 0.02,
seeds {0, 1}, λ every 50 steps (16 runs); ``tiny`` (tests) a 784-32-32-32-10 tanh MLP on the first 128 images at
η = 0.05, where the same dynamics play out in 800 steps (initial λ ≈ 20, so λ* of ρ ∈ {0.01, 0.02} = 30.6, 26.2
lies between it and 2/η = 40). Each λ is measured from ``top_eigenvalues``' default start, not warm-started from the
previous eigenvector (``v0``), so no measurement depends on the one before; the measurements are most of a run's cost.

Example:
    >>> round(stability_edge(0.02, 0.01), 3), stability_edge(0.02, 0.0)
    (61.803, 100.0)
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from samkit.experiments import Claim, ConfigError, Experiment, Figure, Param, Table, Unit, fmt, register
from samkit.experiments.plotting import METHOD_STYLE, method_label, new_figure, save_figure

__all__ = ["stability_edge", "EdgeOfStability"]

METHODS = ("gd", "usam", "sam")


def stability_edge(eta: float, rho: float) -> float:
    """The curvature λ at which ``η(λ + ρλ²) = 2``: GD's edge 2/η at ρ = 0, USAM's λ* at its ρ.

    Theorem 1: USAM on a quadratic of top curvature λ is stable iff ``η(λ + ρλ²) < 2``, so its edge of stability is
    the positive root ``(−1 + √(1 + 8ρ/η)) / (2ρ)``, computed here as ``4 / (η (1 + √(1 + 8ρ/η)))`` (the same number,
    without cancellation, and 2/η at ρ = 0). SAM's ‖g‖-dependent edge (Long & Bartlett 2023) is this at ρ/‖g‖.

    >>> stability_edge(0.02, 0.02)
    50.0
    """
    if not (eta > 0 and math.isfinite(eta)):
        raise ValueError(f"eta must be a positive finite number, got {eta!r}")
    if not (rho >= 0 and math.isfinite(rho)):
        raise ValueError(f"rho must be a finite number >= 0, got {rho!r}")
    return 4.0 / (eta * (1.0 + math.sqrt(1.0 + 8.0 * rho / eta)))


def _preset(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "seed": 0,
        "dataset": "fashion-mnist",
        "n_train": 1000,
        "hidden": [128, 128],
        "etas": [0.03],
        "steps": [2000],
        "usam_etas": [0.03, 0.03],
        "usam_rhos": [0.005, 0.01],
        "sam_etas": [0.03],
        "sam_rhos": [0.01],
        "seeds": [0],
        "eig_every": 50,
        "eig_tol": 1e-3,
        "blowup": 1e6,
        "lambda_init_bound": 45.0,
        "max_edge_fraction": 0.85,
        "plateau_tol": 0.05,
        "stable_cv": 0.05,
        "sam_max_fraction": 0.6,
        "sam_edge_tol": 0.07,
    }
    base.update(kw)
    return base


_DATA_CACHE: dict[tuple[str, int], Any] = {}


def _data(dataset: str, n: int) -> tuple[Any, Any]:
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


def _half_squared_error(out: Any, target: Any) -> Any:
    """½Σ_c (f_c − y_c)², averaged over the samples."""
    return 0.5 * (out - target).pow(2).sum(dim=1).mean()


def _rows(t: Table, method: str) -> list[tuple[float, float, int]]:
    """The distinct (η, ρ, seed) runs of ``method`` in a curve table."""
    s = t.where(method=method)
    return sorted({(float(r["eta"]), float(r["rho"]), int(r["seed"])) for r in s.rows})


@register
class EdgeOfStability(Experiment):
    name = "E8"
    title = "The edge of stability in a deep network follows Theorem 1's threshold"
    summary = (
        "Full-batch GD, USAM and SAM on a tanh MLP (Fashion-MNIST subset, squared loss): the top Hessian eigenvalue "
        "rises until the method's stability limit and hovers there — 2/η for GD, the root λ* of η(λ + ρλ²) = 2 for "
        "USAM (Theorem 1), the ‖g_t‖-dependent edge λ(1 + ρλ/‖g_t‖) = 2/η for SAM."
    )
    presets = {
        "tiny": _preset(
            n_train=128,
            hidden=[32, 32, 32],
            etas=[0.05],
            steps=[800],
            usam_etas=[0.05, 0.05],
            usam_rhos=[0.01, 0.02],
            sam_etas=[0.05],
            sam_rhos=[0.02],
            eig_every=40,
            lambda_init_bound=25.0,
        ),
        "quick": _preset(eig_every=100),
        "full": _preset(
            etas=[0.02, 0.03],
            steps=[4000, 3000],
            usam_etas=[0.02, 0.02, 0.02, 0.03, 0.03],
            usam_rhos=[0.005, 0.01, 0.02, 0.005, 0.01],
            sam_etas=[0.02],
            sam_rhos=[0.01],
            seeds=[0, 1],
        ),
    }
    schema = {
        "seed": Param(int, "seed recorded with the results (the runs use seeds)", min=0),
        "dataset": Param(str, "training images (the first n_train, flattened)", choices=("fashion-mnist",)),
        "n_train": Param(int, "training images used, all in every full-batch step", min=1),
        "hidden": Param(list[int], "widths of the tanh hidden layers", min=1),
        "etas": Param(list[float], "step sizes; a GD control runs at each", min=0, strict=True),
        "steps": Param(list[int], "steps of every run at each step size", min=1, length="etas"),
        "usam_etas": Param(list[float], "step size of each USAM run (each one of etas)", min=0, strict=True),
        "usam_rhos": Param(list[float], "ρ of each USAM run", min=0, strict=True, length="usam_etas"),
        "sam_etas": Param(list[float], "step size of each SAM run (each one of etas)", min=0, strict=True),
        "sam_rhos": Param(list[float], "ρ of each SAM run", min=0, strict=True, length="sam_etas"),
        "seeds": Param(list[int], "seeds: every run once per seed", min=0),
        "eig_every": Param(int, "steps between two Lanczos measurements of λ", min=1),
        "eig_tol": Param(float, "relative tolerance of each λ measurement", min=0, strict=True, below=1),
        "blowup": Param(float, "a loss at or above this (or non-finite) is a divergence", min=0, strict=True),
        "lambda_init_bound": Param(float, "USAM's λ* must exceed this bound on the initial λ", min=0),
        "max_edge_fraction": Param(
            float, "E8.3: USAM plateau at most this × 2/η; so must λ* be", min=0, strict=True, max=1
        ),
        "plateau_tol": Param(float, "E8.1/E8.2: |plateau/edge − 1| allowed", min=0, strict=True, below=1),
        "stable_cv": Param(float, "a plateau's last-third std/mean must be at most this", min=0, strict=True),
        "sam_max_fraction": Param(float, "E8.4: SAM's plateau at most this × 2/η", min=0, strict=True, max=1),
        "sam_edge_tol": Param(float, "E8.4: |mean λ_t/edge_t − 1| allowed", min=0, strict=True, below=1),
    }

    # -- config ---------------------------------------------------------------------------------------------------
    def validate(self, config: Mapping[str, Any]) -> None:
        """Every USAM/SAM step size is one of etas, no run twice, steps ≥ 3 measurements, and every USAM (η, ρ) has
        its λ* clearly between the initial λ (lambda_init_bound) and max_edge_fraction × 2/η."""
        etas = config["etas"]
        if len(set(etas)) != len(etas):
            raise ConfigError(f"etas must be distinct, got {etas}")
        if any(s < 3 * config["eig_every"] for s in config["steps"]):
            raise ConfigError(
                f"steps must be at least 3 × eig_every = {3 * config['eig_every']}, got {config['steps']}"
            )
        for method in ("usam", "sam"):
            pairs = list(zip(config[f"{method}_etas"], config[f"{method}_rhos"]))
            for eta in config[f"{method}_etas"]:
                if not any(math.isclose(eta, e) for e in etas):
                    raise ConfigError(f"{method}_etas must each be one of etas {etas} (its GD control), got {eta}")
            if len(set(pairs)) != len(pairs):
                raise ConfigError(f"{method}_etas/{method}_rhos list the same (η, ρ) twice: {pairs}")
        for eta, rho in zip(config["usam_etas"], config["usam_rhos"]):
            lam, gd_edge = stability_edge(eta, rho), 2.0 / eta
            if lam <= config["lambda_init_bound"]:
                raise ConfigError(
                    f"USAM at (η={eta:g}, ρ={rho:g}) has λ* = {lam:.3g} ≤ lambda_init_bound = "
                    f"{config['lambda_init_bound']:g} (the initial sharpness): there is no approach from below; "
                    "choose a smaller ρ or η"
                )
            if lam > config["max_edge_fraction"] * gd_edge:
                raise ConfigError(
                    f"USAM at (η={eta:g}, ρ={rho:g}) has λ* = {lam:.3g} > max_edge_fraction × 2/η = "
                    f"{config['max_edge_fraction']:g} × {gd_edge:.3g}: too close to GD's edge to tell them apart; "
                    "choose a larger ρ"
                )

    def missing(self, config: Mapping[str, Any]) -> str | None:
        """The dataset's problem (not installed, corrupt) before any unit starts, or ``None``."""
        try:
            _data(config["dataset"], config["n_train"])
        except ConfigError as err:
            return str(err)
        return None

    # -- units ----------------------------------------------------------------------------------------------------
    def units(self, config: Mapping[str, Any]) -> list[Unit]:
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

    def run_unit(self, params: Mapping[str, Any]) -> dict[str, Any]:
        import torch

        import samkit
        from samkit.sharpness import top_eigenvalues

        x, y = _data(params["dataset"], params["n_train"])
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
        else:
            opt = samkit.SAM(model.parameters(), torch.optim.SGD, rho=rho, eps=0.0, lr=eta)

        def closure() -> Any:
            opt.zero_grad()
            loss = _half_squared_error(model(x), y)
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
                gnorm = float(torch.cat([p.grad.reshape(-1) for p in model.parameters()]).norm())
                opt.zero_grad()
                if not (math.isfinite(loss) and math.isfinite(gnorm) and loss < params["blowup"]):
                    diverged_step = t
                    break
                with warnings.catch_warnings():  # a non-converged estimate is counted, not printed
                    warnings.simplefilter("ignore", RuntimeWarning)
                    r = top_eigenvalues(model, _half_squared_error, [(x, y)], k=1, method="lanczos",
                                        tol=params["eig_tol"])  # fmt: skip
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

    def tables(self, config: Mapping[str, Any], results: Mapping[str, Mapping[str, Any]]) -> dict[str, list[dict]]:
        runs, curves = [], []
        for unit in self.units(config):
            r, p = results[unit.key], unit.params
            key = {"method": p["method"], "eta": p["eta"], "rho": p["rho"], "seed": p["seed"]}
            runs.append(
                {
                    **key,
                    "steps": p["steps"],
                    "diverged": bool(r["diverged"]),
                    "diverged_step": "" if r["diverged_step"] is None else r["diverged_step"],
                    "measurements": len(r["step"]),
                    "n_hvp": r["n_hvp"],
                    "eig_unconverged": r["eig_unconverged"],
                }
            )
            for i, step in enumerate(r["step"]):
                curves.append(
                    {
                        **key,
                        "step": step,
                        "lam": r["lam"][i],
                        "loss": r["loss"][i],
                        "grad_norm": r["grad_norm"][i],
                    }
                )
        return {"runs": runs, "curves": curves}

    # -- analysis -------------------------------------------------------------------------------------------------
    @staticmethod
    def _stats(config: Mapping[str, Any], data: Mapping[str, Table]) -> dict[tuple, dict[str, Any]]:
        """Per run ``(method, η, ρ, seed)``: initial λ, plateau (mean over the last third), its std/mean, whether it
        diverged, the edge it is compared with, and for SAM the mean of λ_t / edge(ρ/‖g_t‖) over the last third."""
        curves, runs = data["curves"], data["runs"]
        out: dict[tuple, dict[str, Any]] = {}
        for row in runs.rows:
            m, eta, rho, seed = row["method"], float(row["eta"]), float(row["rho"]), int(row["seed"])
            c = curves.where(method=m, eta=eta, rho=rho, seed=seed)
            step, lam, gn = c.col("step"), c.col("lam"), c.col("grad_norm")
            order = np.argsort(step)
            step, lam, gn = step[order], lam[order], gn[order]
            last = step > (2.0 / 3.0) * float(row["steps"])
            diverged = bool(row["diverged"]) or not bool(np.all(np.isfinite(lam)))
            n_last = int(last.sum())
            plateau = float(lam[last].mean()) if n_last else float("nan")
            cv = float(lam[last].std() / plateau) if n_last and plateau > 0 else float("nan")
            edge = stability_edge(eta, rho if m == "usam" else 0.0)
            sam_ratio = float("nan")
            if m == "sam" and n_last:
                edges = np.array([stability_edge(eta, rho / g) if g > 0 else 0.0 for g in gn[last]])
                sam_ratio = float(np.mean(lam[last] / edges))
            stable = (not diverged) and n_last >= 3 and cv <= config["stable_cv"]
            out[(m, eta, rho, seed)] = {
                "lam0": float(lam[0]) if len(lam) else float("nan"),
                "plateau": plateau,
                "cv": cv,
                "n_last": n_last,
                "diverged": diverged,
                "stable": bool(stable),
                "edge": edge,
                "gd_fraction": plateau * eta / 2.0,
                "ratio": plateau / edge,
                "sam_edge_ratio": sam_ratio,
                "grad_norm": float(gn[last].mean()) if n_last else float("nan"),
            }
        return out

    @staticmethod
    def _gd_reached(stats: Mapping[tuple, Mapping[str, Any]], eta: float, seed: int, tol: float) -> bool:
        """Whether GD at (η, seed) ran stably to its own edge (else the runs were too short to judge)."""
        gd = [s for (m, e, _, sd), s in stats.items() if m == "gd" and math.isclose(e, eta) and sd == seed]
        return bool(gd) and all(s["stable"] and s["gd_fraction"] >= 1.0 - tol for s in gd)

    def _preconditions(
        self, config: Mapping[str, Any], stats: Mapping[tuple, Mapping[str, Any]], method: str
    ) -> list[str]:
        """Why the runs of ``method`` do not put the mechanism to work (empty when they do)."""
        tol = config["plateau_tol"]
        why = []
        keys = [k for k in stats if k[0] == method]
        if not keys:
            why.append(f"no {method.upper()} run in this config")
        for k in keys:
            s, (_, eta, rho, seed) = stats[k], k
            name = f"{method.upper()} (η={eta:g}, ρ={rho:g}, seed {seed})"
            if s["diverged"]:
                why.append(f"{name} diverged")
            elif not s["stable"]:
                why.append(f"{name} is not stable (last-third std/mean {fmt(s['cv'])} > {config['stable_cv']:g})")
            if method == "usam" and not s["lam0"] < (1.0 - tol) * s["edge"]:
                why.append(f"{name} starts at λ0 = {fmt(s['lam0'])}, not below (1 − {tol:g}) λ* = "
                           f"{fmt((1.0 - tol) * s['edge'])}: no approach from below")  # fmt: skip
            if not self._gd_reached(stats, eta, seed, tol):
                why.append(f"GD at (η={eta:g}, seed {seed}) did not run stably to its edge (runs too short?)")
        return list(dict.fromkeys(why))

    def _setting(self, config: Mapping[str, Any]) -> str:
        hidden = "-".join(str(h) for h in config["hidden"])

        def rhos(method: str, eta: float) -> list[float]:
            pairs = zip(config[f"{method}_etas"], config[f"{method}_rhos"])
            return [r for e, r in pairs if math.isclose(e, eta)]

        runs = "; ".join(
            f"η={e:g}: {s} steps, USAM ρ∈{rhos('usam', e)}, SAM ρ∈{rhos('sam', e)}"
            for e, s in zip(config["etas"], config["steps"])
        )
        return (
            f"tanh MLP input-{hidden}-10, first {config['n_train']} {config['dataset']} images, ½‖f−y‖² (one-hot), "
            f"full-batch SGD; {runs}; seeds {config['seeds']}; λ by Lanczos (tol {config['eig_tol']:g}) every "
            f"{config['eig_every']} steps, plateau = mean over the last third"
        )

    @staticmethod
    def _list(stats: Mapping[tuple, Mapping[str, Any]], method: str, field: str) -> str:
        return "; ".join(
            f"η={e:g}" + (f" ρ={r:g}" if method != "gd" else "") + f" s{sd}: {s[field]:.3f}"
            for (m, e, r, sd), s in sorted(stats.items())
            if m == method
        )

    # -- claims ---------------------------------------------------------------------------------------------------
    def claims(self, config: Mapping[str, Any], data: Mapping[str, Table]) -> list[Claim]:
        stats = self._stats(config, data)
        tol = config["plateau_tol"]
        setting = self._setting(config)

        def claim(id: str, statement: str, prediction: str, measured: str, tolerance: str, passed: bool,
                  why: Sequence[str] = (), values: dict | None = None) -> Claim:  # fmt: skip
            """A claim on ``sharpness.png``; NOT EXERCISED (reasons appended to ``measured``) when ``why``."""
            if why:
                measured += f" — precondition not met: {'; '.join(why)}"
            return Claim(id=id, statement=statement, setting=setting, prediction=prediction, measured=measured,
                         tolerance=tolerance, passed=bool(passed) and not why, exercised=not why,
                         figure="sharpness.png", data=["data/curves.csv", "data/runs.csv"], values=values or {})  # fmt: skip

        def runs(method: str) -> dict[tuple, dict[str, Any]]:
            return {k: s for k, s in stats.items() if k[0] == method}

        def ratios(method: str, field: str) -> dict[str, float]:
            return {"/".join(f"{v:g}" for v in k[1:3]) + f"/s{k[3]}": s[field] for k, s in runs(method).items()}

        gd, usam, sam = runs("gd"), runs("usam"), runs("sam")
        measured = "plateau/(2/η): " + (self._list(stats, "gd", "ratio") or "no GD run")
        if any(s["ratio"] < 1.0 - tol for s in gd.values()):
            measured += (
                "; below the band: the runs were too short for sharpening to reach the edge, so they say "
                "nothing about USAM or SAM"
            )
        unstable = [f"η={k[1]:g} s{k[3]}" for k, s in gd.items() if not s["stable"]]
        if unstable:
            measured += f"; not stable: {', '.join(unstable)}"
        out = [
            claim(
                "E8.1",
                "Control: full-batch GD's sharpness rises to its edge of stability 2/η and hovers there "
                "(Cohen et al. 2021).",
                "plateau = 2/η at every η and seed",
                measured,
                f"plateau/(2/η) ∈ [{1 - tol:g}, {1 + tol:g}]; stable (no divergence, last-third std/mean ≤ "
                f"{config['stable_cv']:g})",
                bool(gd) and all(s["stable"] and abs(s["ratio"] - 1.0) <= tol for s in gd.values()),
                values={"ratios": ratios("gd", "ratio")},
            )
        ]

        why_u = self._preconditions(config, stats, "usam")
        preds = "; ".join(f"η={e:g} ρ={r:g}: {stability_edge(e, r):.3g}" for e, r in sorted({k[1:3] for k in usam}))
        out.append(
            claim(
                "E8.2",
                "USAM's sharpness hovers at Theorem 1's threshold: the root λ* of η(λ + ρλ²) = 2.",
                f"plateau = λ* = (−1 + √(1 + 8ρ/η))/(2ρ): {preds or 'no USAM run'}",
                "plateau/λ*: " + (self._list(stats, "usam", "ratio") or "no USAM run"),
                f"plateau/λ* ∈ [{1 - tol:g}, {1 + tol:g}] for every (η, ρ, seed)",
                bool(usam) and all(abs(s["ratio"] - 1.0) <= tol for s in usam.values()),
                why_u,
                {"ratios": ratios("usam", "ratio")},
            )
        )

        frac = config["max_edge_fraction"]
        pairs, bad = 0, []
        for eta, seed in sorted({(k[1], k[3]) for k in usam}):
            by_rho = sorted((k[2], s["plateau"]) for k, s in usam.items() if k[1] == eta and k[3] == seed)
            if len(by_rho) >= 2:
                pairs += 1
                p = [v for _, v in by_rho]
                if not all(b < a for a, b in zip(p, p[1:])):
                    bad.append(f"η={eta:g} s{seed}: " + ", ".join(f"ρ={r:g}→{v:.3g}" for r, v in by_rho))
        why3 = list(why_u) + (["no (η, seed) with two or more ρ: monotonicity cannot be checked"] if not pairs else [])
        out.append(
            claim(
                "E8.3",
                "USAM's plateaus are not GD's edge: they sit well below 2/η and fall as ρ grows.",
                f"plateau ≤ {frac:g} × 2/η; strictly decreasing in ρ at fixed η and seed",
                "plateau/(2/η): "
                + (self._list(stats, "usam", "gd_fraction") or "no USAM run")
                + (f"; not decreasing: {'; '.join(bad)}" if bad else f"; decreasing in ρ at {pairs} (η, seed)"),
                "none",
                bool(usam) and all(s["gd_fraction"] <= frac for s in usam.values()) and not bad,
                list(dict.fromkeys(why3)),
                {"fractions": ratios("usam", "gd_fraction")},
            )
        )

        sfrac, stol = config["sam_max_fraction"], config["sam_edge_tol"]
        out.append(
            claim(
                "E8.4",
                "SAM's sharpness stays well below 2/η, at the ‖g_t‖-dependent edge λ(1 + ρλ/‖g_t‖) = 2/η "
                "(Long & Bartlett 2023).",
                f"plateau ≤ {sfrac:g} × 2/η; mean over the last third of λ_t / edge_t = 1, edge_t the root of "
                "λ(1 + ρλ/‖g_t‖) = 2/η with the full-batch ‖g_t‖ at that step",
                "plateau/(2/η): "
                + (self._list(stats, "sam", "gd_fraction") or "no SAM run")
                + "; mean λ_t/edge_t: "
                + (self._list(stats, "sam", "sam_edge_ratio") or "–"),
                f"|mean λ_t/edge_t − 1| ≤ {stol:g} for every run",
                bool(sam)
                and all(s["gd_fraction"] <= sfrac and abs(s["sam_edge_ratio"] - 1.0) <= stol for s in sam.values()),
                self._preconditions(config, stats, "sam"),
                {"edge_ratios": ratios("sam", "sam_edge_ratio")},
            )
        )
        return out

    # -- figures --------------------------------------------------------------------------------------------------
    def figures(self, config: Mapping[str, Any], data: Mapping[str, Table], fig_dir: Path) -> list[Figure]:
        curves = data["curves"]
        stats = self._stats(config, data)
        etas = sorted({float(e) for e in config["etas"]})
        fig, axes = new_figure(len(etas), 1, width=5.6, height=5.2)
        reds = ["#f4a582", "#d6604d", "#b2182b", "#67001f"]
        blues = ["#2166ac", "#4393c3", "#92c5de"]
        for ax, eta, steps in zip(axes[0], etas, [dict(zip(config["etas"], config["steps"]))[e] for e in etas]):
            ax.axvspan(2.0 * steps / 3.0, steps, color="#f0f0f0", zorder=0, label="last third (plateau)")
            ax.axhline(2.0 / eta, color=METHOD_STYLE["gd"]["color"], ls="--", lw=1.2, label="2/η (GD's edge)")
            for method in METHODS:
                rhos = sorted({k[2] for k in stats if k[0] == method and math.isclose(k[1], eta)})
                for i, rho in enumerate(rhos):
                    color = {"gd": METHOD_STYLE["gd"]["color"], "usam": reds[i % 4], "sam": blues[i % 3]}[method]
                    label = method_label(method).split(" ")[0] + (f" ρ={rho:g}" if method != "gd" else "")
                    seeds = sorted({k[3] for k in stats if k[:3] == (method, eta, rho)})
                    for j, seed in enumerate(seeds):
                        c = curves.where(method=method, eta=eta, rho=rho, seed=seed)
                        ax.plot(c.col("step"), c.col("lam"), color=color, lw=1.3, alpha=1.0 if j == 0 else 0.55,
                                label=label if j == 0 else None)  # fmt: skip
                        if method == "sam":
                            edge = [stability_edge(eta, rho / g) if g > 0 else np.nan for g in c.col("grad_norm")]
                            ax.plot(c.col("step"), edge, color=color, ls=":", lw=1, alpha=0.9,
                                    label="its ‖g_t‖ edge" if j == 0 else None)  # fmt: skip
                    if method == "usam":
                        ax.axhline(stability_edge(eta, rho), color=color, ls=":", lw=1.2, label=f"λ* (ρ={rho:g})")
            ax.set_xlabel("step t")
            ax.set_ylabel("top Hessian eigenvalue λ")
            ax.set_title(f"η = {eta:g}")
            ax.set_ylim(0, 1.25 * 2.0 / eta)
            ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=3, frameon=False)
        f1 = save_figure(fig, fig_dir / "sharpness.png")
        return [
            Figure(
                f1,
                "Sharpness against step, with each method's predicted edge",
                "Top Hessian eigenvalue (Lanczos on the full training subset) during full-batch training, one panel "
                "per step size η (later seeds drawn lighter). Dashed: GD's edge 2/η. Dotted horizontal lines: "
                "Theorem 1's USAM edge λ*, the root of η(λ + ρλ²) = 2. Dotted blue curves: SAM's ‖g_t‖-dependent "
                "edge, the root of λ(1 + ρλ/‖g_t‖) = 2/η with the full-batch gradient norm at each step. "
                f"{self._setting(config)}.",
                ["E8.1", "E8.2", "E8.3", "E8.4"],
                ["data/curves.csv"],
            )
        ]
