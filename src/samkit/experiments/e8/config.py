"""E8's configuration: the presets, the schema of every key, the rules between keys (every USAM (η, ρ) must have its
edge λ* clearly between the initial sharpness and 2/η) and the edge formula."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from samkit.experiments.base import ConfigError, Param

#: The methods, the GD control first.
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


def preset(**kw: Any) -> dict[str, Any]:
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


PRESETS = {
    "tiny": preset(
        n_train=128,
        hidden=[32, 32, 32],
        etas=[0.04],
        steps=[1000],
        usam_etas=[0.04, 0.04],
        usam_rhos=[0.01, 0.02],
        sam_etas=[0.04],
        sam_rhos=[0.01],
        eig_every=40,
        lambda_init_bound=25.0,
        seeds=[0, 1, 2, 3, 4],
    ),
    "quick": preset(eig_every=100, seeds=[0, 1, 2, 3, 4]),
    "full": preset(
        etas=[0.02, 0.03],
        steps=[4000, 3000],
        usam_etas=[0.02, 0.02, 0.02, 0.03, 0.03],
        usam_rhos=[0.005, 0.01, 0.02, 0.005, 0.01],
        sam_etas=[0.02],
        sam_rhos=[0.01],
        seeds=[0, 1, 2, 3, 4],
    ),
}

SCHEMA = {
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
        float, "USAM's λ* must be at most this × 2/η (so its edge is not GD's)", min=0, strict=True, max=1
    ),
    "plateau_tol": Param(
        float, "E8.1/E8.2: |plateau/edge − 1| allowed (the seeds' interval of its mean)", min=0, strict=True, below=1
    ),
    "stable_cv": Param(float, "a plateau's last-third std/mean must be at most this", min=0, strict=True),
    "sam_max_fraction": Param(float, "E8.3: SAM's plateau at most this × 2/η", min=0, strict=True, max=1),
    "sam_edge_tol": Param(float, "E8.3: |mean λ_t/edge_t − 1| allowed", min=0, strict=True, below=1),
}


def validate(config: Mapping[str, Any]) -> None:
    """Every USAM/SAM step size is one of etas, etas and seeds distinct, no run twice, steps ≥ 3 measurements, every
    USAM (η, ρ) has its λ* clearly between the initial λ (lambda_init_bound) and max_edge_fraction × 2/η, and the
    λ* of two ρ at one η are further apart than ±plateau_tol can confuse."""
    etas = config["etas"]
    for key in ("etas", "seeds"):
        if len(set(config[key])) != len(config[key]):
            raise ConfigError(f"{key} must be distinct, got {config[key]}")
    if any(s < 3 * config["eig_every"] for s in config["steps"]):
        raise ConfigError(f"steps must be at least 3 × eig_every = {3 * config['eig_every']}, got {config['steps']}")
    for method in ("usam", "sam"):
        pairs = list(zip(config[f"{method}_etas"], config[f"{method}_rhos"]))
        for eta in config[f"{method}_etas"]:
            if not any(math.isclose(eta, e) for e in etas):
                raise ConfigError(f"{method}_etas must each be one of etas {etas} (its GD control), got {eta}")
        if len(set(pairs)) != len(pairs):
            raise ConfigError(f"{method}_etas/{method}_rhos list the same (η, ρ) twice: {pairs}")
    tol = config["plateau_tol"]
    for eta in etas:
        lams = sorted(stability_edge(e, r) for e, r in zip(config["usam_etas"], config["usam_rhos"]) if e == eta)
        for lo, hi in zip(lams, lams[1:]):
            if hi / lo <= (1 + tol) / (1 - tol):
                raise ConfigError(
                    f"two USAM ρ at η={eta:g} have λ* = {lo:.3g} and {hi:.3g}, closer than the plateau tolerance "
                    f"±{tol:g} can tell apart: choose ρ further apart"
                )
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


def setting(config: Mapping[str, Any]) -> str:
    """The setting of the claims, in words."""
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
