"""E9's configuration: the presets, the schema of every key, the rules between keys, and the setting in words."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from samkit.dynamics import theory
from samkit.experiments._common import BLOWUP, SEED, grid_keys, theory_float
from samkit.experiments.base import ConfigError, Param


def preset(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "seed": 0,
        # the quadratic: phase diagrams and the 2-cycle
        "eigenvalues": [10.0, 1.0],
        "x0": [1.0, 1.0],
        "eta_min": 0.004,
        "eta_max": 0.3,
        "n_eta": 60,
        "rho_min": 0.001,
        "rho_max": 10.0,
        "n_rho": 41,
        "steps": 2000,
        "blowup": 1e12,
        "lams": [0.0, 0.25, 0.5, 0.75, 1.0],
        "band": 0.02,
        "min_agreement": 0.99,
        "cycle_etas": [0.05, 0.1, 0.15, 0.19],
        "cycle_rhos": [0.01, 0.1, 1.0],
        "cycle_tol": 1e-6,
        # the scalar factorization: the divergence boundary against λ
        "fact_eta_min": 0.002,
        "fact_eta_max": 0.05,
        "n_fact_eta": 5,
        "fact_lams": [0.0, 0.25, 0.5, 0.75, 0.9, 1.0],
        "fact_steps": 3000,
        "bisect_rho_min": 1e-4,
        "bisect_rho_max": 1.0,
        "bisect_tol": 0.01,
        "sam_rho_max": 1.0,
        "kappa_max": 0.05,
        "boundary_tol": 0.1,
        # the deep net: the edge of stability against λ
        "dataset": "fashion-mnist",
        "n_train": 128,
        "hidden": [32, 32, 32],
        "net_eta": 0.04,
        "net_rho": 0.005,
        "net_steps": 1000,
        "gd_steps": 2000,
        "net_lams": [0.0, 0.25, 0.5, 0.75, 1.0],
        "seeds": [0, 1, 2, 3, 4],
        "eig_every": 40,
        "eig_tol": 1e-3,
        "net_blowup": 1e6,
        "max_edge_fraction": 0.85,
        "gd_tol": 0.05,
        "stable_cv": 0.05,
        "edge_tol": 0.07,
    }
    base.update(kw)
    return base


PRESETS = {
    "tiny": preset(
        n_eta=12,
        n_rho=8,
        steps=1000,
        lams=[0.0, 0.5, 1.0],
        cycle_etas=[0.1, 0.19],
        cycle_rhos=[0.01, 0.1],
        n_fact_eta=3,
        fact_lams=[0.0, 0.5, 1.0],
        fact_steps=1500,
        net_lams=[0.0, 0.5, 1.0],
        seeds=[0, 1, 2],
    ),
    "quick": preset(),
    "full": preset(
        n_eta=150,
        n_rho=101,
        steps=5000,
        lams=[0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0],
        n_fact_eta=9,
        fact_lams=[0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 1.0],
        fact_steps=6000,
        bisect_tol=0.002,
        bisect_rho_max=10.0,
        net_lams=[0.0, 0.1, 0.25, 0.5, 0.75, 1.0],
        seeds=list(range(10)),
    ),
}

_LAM: dict[str, Any] = {"min": 0, "max": 1}

SCHEMA = {
    "seed": SEED,
    "eigenvalues": Param(list[float], "eigenvalues of H in L = ½xᵀHx; β is the largest", min=0, strict=True),
    "x0": Param(list[float], "start point of the quadratic runs", length="eigenvalues"),
    **grid_keys("eta", "step size of the phase diagrams", "evenly spaced"),
    **grid_keys("rho", "ρ of the phase diagrams", "log-spaced"),
    "steps": Param(int, "iterations of each quadratic run (phase diagrams, 2-cycle)", min=1),
    "blowup": BLOWUP,
    "lams": Param(list[float], "λ of the phase diagrams and the 2-cycle (0: USAM, 1: SAM)", **_LAM),
    "band": Param(float, "E9.1: cells with |η/threshold − 1| ≤ band are left out", min=0),
    "min_agreement": Param(float, "E9.1: fraction of cells that must agree, at every λ", min=0, strict=True, max=1),
    "cycle_etas": Param(list[float], "E9.2: step sizes of the 2-cycle runs", min=0, strict=True),
    "cycle_rhos": Param(list[float], "E9.2: ρ of the 2-cycle runs", min=0, strict=True),
    "cycle_tol": Param(float, "E9.2: relative error allowed on the amplitude", min=0, strict=True),
    **grid_keys("fact_eta", "step size of the factorization runs", "log-spaced"),
    "fact_lams": Param(list[float], "E9.3: λ of the factorization boundary (must include 0)", **_LAM),
    "fact_steps": Param(int, "E9.3: iterations of each factorization run", min=1),
    "bisect_rho_min": Param(float, "E9.3: lower end of the bisection bracket of ρ*", min=0, strict=True),
    "bisect_rho_max": Param(float, "E9.3: upper end of the bracket", min=0, strict=True),
    "bisect_tol": Param(float, "E9.3: bisection stops when the bracket's hi/lo ≤ 1 + this", min=0, strict=True),
    "sam_rho_max": Param(
        float, "E9.3: SAM (λ = 1) must stay bounded at this ρ at every η (Theorem 2: ρ = O(1))", min=0, strict=True
    ),
    "kappa_max": Param(
        float, "E9.3: judge (λ, η) where the normalized part's relative size κ = λρ*√η is at most this", min=0
    ),
    "boundary_tol": Param(float, "E9.3: |(1 − λ)ρ*(λ)/ρ*(0) − 1| allowed", min=0, strict=True, below=1),
    "dataset": Param(str, "training images of the deep-net runs (the first n_train)", choices=("fashion-mnist",)),
    "n_train": Param(int, "training images, all in every full-batch step", min=1),
    "hidden": Param(list[int], "widths of the tanh hidden layers", min=1),
    "net_eta": Param(float, "step size of the deep-net runs", min=0, strict=True),
    "net_rho": Param(float, "ρ of the deep-net runs (every λ)", min=0, strict=True),
    "net_steps": Param(int, "steps of each unified deep-net run", min=1),
    "gd_steps": Param(
        int, "steps of the GD control (sharpening to 2/η is slower than to the dial's lower edges)", min=1
    ),
    "net_lams": Param(list[float], "E9.4/E9.5: λ of the deep-net runs, ascending", **_LAM),
    "seeds": Param(list[int], "seeds of the deep-net runs (GD and every λ once per seed)", min=0),
    "eig_every": Param(int, "steps between two Lanczos measurements of the sharpness", min=1),
    "eig_tol": Param(float, "relative tolerance of each sharpness measurement", min=0, strict=True, below=1),
    "net_blowup": Param(float, "a loss at or above this (or non-finite) is a divergence", min=0, strict=True),
    "max_edge_fraction": Param(
        float, "λ = 0's edge λ* must be at most this × 2/η (else the dial starts at GD's edge)", min=0, max=1
    ),
    "gd_tol": Param(float, "GD control: |plateau/(2/η) − 1| allowed for a seed to be judged", min=0, below=1),
    "stable_cv": Param(float, "a plateau's last-third std/mean must be at most this", min=0, strict=True),
    "edge_tol": Param(float, "E9.4: |mean sharpness_t/edge_t − 1| allowed", min=0, strict=True, below=1),
}


def _distinct_ascending(config: Mapping[str, Any], key: str) -> None:
    vals = config[key]
    if any(b <= a for a, b in zip(vals, vals[1:])):
        raise ConfigError(f"{key} must be distinct and ascending, got {vals}")


def validate(config: Mapping[str, Any]) -> None:
    """λ lists distinct and ascending, a bisection bracket that reaches 1.5 × the predicted boundary, steps enough to see a run just outside the band diverge, fact_lams holds 0 (the USAM reference), net_lams at least two values, the
    bracket ordered, every λ > 0 of lams has a 2-cycle cell below its threshold, the deep-net runs measure at least
    three times, and λ = 0's edge λ* is below max_edge_fraction × 2/η (else the dial starts at GD's edge)."""
    for key in ("lams", "fact_lams", "net_lams", "seeds"):
        _distinct_ascending(config, key)
    if config["fact_lams"][0] != 0.0:
        raise ConfigError(f"fact_lams must include 0 (USAM's boundary is the reference), got {config['fact_lams']}")
    if len(config["net_lams"]) < 2:
        raise ConfigError(f"net_lams needs at least two values (E9.5 compares them), got {config['net_lams']}")
    if not config["bisect_rho_min"] < config["bisect_rho_max"]:
        raise ConfigError(
            f"bisect_rho_min must be < bisect_rho_max, got {config['bisect_rho_min']} and {config['bisect_rho_max']}"
        )
    free = [lam for lam in config["fact_lams"] if lam < 1.0]
    need_hi = 1.5 * theory_float(theory.scalar_factorization_unified_boundary(config["fact_eta_max"], max(free)))
    if config["bisect_rho_max"] < need_hi:
        raise ConfigError(
            f"bisect_rho_max = {config['bisect_rho_max']:g} cannot bracket the boundary at λ = {max(free):g}, η = "
            f"{config['fact_eta_max']:g}: the prediction is η/(1 − λ) = {need_hi / 1.5:.3g}; the bracket needs 1.5 times "
            f"that ({need_hi:.3g}: USAM's measured constant 1.07 and the claim's tolerance fit under it)"
        )
    for key in ("net_steps", "gd_steps"):
        if config[key] < 3 * config["eig_every"]:
            raise ConfigError(f"{key} must be at least 3 × eig_every = {3 * config['eig_every']}, got {config[key]}")
    beta = max(config["eigenvalues"])
    top = abs(config["x0"][config["eigenvalues"].index(beta)])
    need = math.log(config["blowup"] / top) / math.log(1.0 + 2.0 * config["band"]) if top > 0 else math.inf
    if config["steps"] < need:
        raise ConfigError(
            f"steps = {config['steps']} cannot show divergence just outside the band: at η = (1 + band) × threshold "
            f"the top mode grows by 1 + 2·band per step, so reaching blowup from x0's top coordinate {top:g} takes "
            f"{need:.0f} steps (a wider band or more steps; x0 needs a component along β's eigenvector)"
        )
    for lam in config["lams"]:
        if lam > 0 and not any(
            e < theory_float(theory.unified_threshold(beta, r, lam))
            for e in config["cycle_etas"]
            for r in config["cycle_rhos"]
        ):
            raise ConfigError(
                f"no (η, ρ) of cycle_etas × cycle_rhos is below the threshold at λ = {lam:g}: E9.2 would have "
                "nothing to check; add a smaller step size"
            )
    eta, rho = config["net_eta"], config["net_rho"]
    edge = theory_float(theory.unified_sharpness_edge(eta, rho, 0.0, 1.0))
    if edge > config["max_edge_fraction"] * 2.0 / eta:
        raise ConfigError(
            f"at net_rho = {rho:g} the dial's λ = 0 end has its edge λ* = {edge:.3g} > max_edge_fraction × 2/η = "
            f"{config['max_edge_fraction']:g} × {2.0 / eta:.3g}: too close to GD's edge to tell apart; choose a larger "
            "net_rho"
        )


def quadratic_setting(config: Mapping[str, Any]) -> str:
    return (
        f"L=½xᵀdiag{tuple(config['eigenvalues'])}x, x0={tuple(config['x0'])}, λ∈{config['lams']}, "
        f"{config['n_eta']}×{config['n_rho']} grid η∈[{config['eta_min']:g}, {config['eta_max']:g}], "
        f"ρ∈[{config['rho_min']:g}, {config['rho_max']:g}], {config['steps']} steps, diverged = ‖x‖>{config['blowup']:g}"
    )


def factorization_setting(config: Mapping[str, Any]) -> str:
    return (
        f"L=½(xy)², y0=η^(−1/2), x0=y0/2, λ∈{config['fact_lams']}, {config['n_fact_eta']} η log-spaced in "
        f"[{config['fact_eta_min']:g}, {config['fact_eta_max']:g}], ρ* by bisection in [{config['bisect_rho_min']:g}, "
        f"{config['bisect_rho_max']:g}] to ±{config['bisect_tol']:g}, {config['fact_steps']} steps per run"
    )


def net_setting(config: Mapping[str, Any]) -> str:
    hidden = "-".join(str(h) for h in config["hidden"])
    return (
        f"tanh MLP input-{hidden}-10, first {config['n_train']} {config['dataset']} images, ½‖f−y‖² (one-hot), "
        f"full batch, SGD base, η={config['net_eta']:g}, ρ={config['net_rho']:g}, λ∈{config['net_lams']} and GD, "
        f"{config['net_steps']} steps (GD {config['gd_steps']}), seeds {config['seeds']}; sharpness by Lanczos (tol {config['eig_tol']:g}) every "
        f"{config['eig_every']} steps, plateau = mean over the last third"
    )
