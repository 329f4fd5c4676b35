"""E9's analysis of the saved tables, computed once per finalize and handed to the claims and the figures.

* the quadratic: per λ, each phase cell's predicted label and threshold (:func:`theory.unified_threshold`);
* the factorization: per (λ, η), ρ*(λ) against USAM's ρ*(0) at the same η — the ratio (1 − λ)ρ*(λ)/ρ*(0) that the
  leading-order prediction sets to 1 — and κ = λρ*√η, the relative size of the normalized part that the
  prediction neglects;
* the deep net: per run its initial sharpness, plateau (mean over the last third), std/mean, the edge
  (:func:`theory.unified_sharpness_edge` with the run's ‖g_t‖ at each measurement; 2/η for GD) and the mean of
  sharpness_t/edge_t over the last third; per seed whether GD reached its own edge (else the runs were too short).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from samkit.dynamics import theory
from samkit.experiments.base import Table


def phase_labels(beta: float, lam: float, eta: np.ndarray, rho: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The predicted stable label of each (η, ρ) cell at λ, and the threshold η is compared with."""
    thr = theory.unified_threshold(beta, torch.as_tensor(rho), lam).numpy()
    return eta < thr, thr


def factorization_rows(table: Table) -> list[dict[str, Any]]:
    """Per (λ, η) row of the factorization table: ``ref`` (λ = 0's ρ* at that η), ``ratio`` = (1 − λ)ρ*/ref (NaN at
    λ = 1 or without a boundary) and ``kappa`` = λρ*√η."""
    ref = {round(float(r["eta"]), 12): float(r["rho_star"]) for r in table.rows if float(r["lam"]) == 0.0}
    out = []
    for r in table.rows:
        lam, eta, star = float(r["lam"]), float(r["eta"]), float(r["rho_star"])
        base = ref.get(round(eta, 12), float("nan"))
        ratio = (1.0 - lam) * star / base if lam < 1.0 else float("nan")
        out.append({**r, "ref": base, "ratio": ratio, "kappa": lam * star * math.sqrt(eta)})
    return out


def run_stats(config: Mapping[str, Any], runs: Table, curves: Table) -> dict[tuple, dict[str, Any]]:
    """Per deep-net run ``(method, λ, seed)`` (λ = None for GD): initial sharpness, plateau, std/mean, whether it
    diverged or settled, the mean edge over the last third, the mean of sharpness_t/edge_t there, and the mean ‖g_t‖."""
    eta, rho = float(config["net_eta"]), float(config["net_rho"])
    out: dict[tuple, dict[str, Any]] = {}
    for row in runs.rows:
        method, seed = row["method"], int(row["seed"])
        lam = None if method == "gd" else float(row["lam"])
        c = curves.where(method=method, seed=seed) if lam is None else curves.where(method=method, lam=lam, seed=seed)
        step, sharp, gn = c.col("step"), c.col("sharpness"), c.col("grad_norm")
        order = np.argsort(step)
        step, sharp, gn = step[order], sharp[order], gn[order]
        last = step > (2.0 / 3.0) * float(row["steps"])
        n_last = int(last.sum())
        diverged = bool(row["diverged"]) or not bool(np.all(np.isfinite(sharp)))
        plateau = float(sharp[last].mean()) if n_last else float("nan")
        cv = float(sharp[last].std() / plateau) if n_last and plateau > 0 else float("nan")
        if lam is None:
            edges = np.full(n_last, 2.0 / eta)
        else:
            g = torch.as_tensor(gn[last]).clamp_min(1e-300)
            edges = theory.unified_sharpness_edge(eta, rho, lam, g).numpy()
        lam0 = float(sharp[0]) if len(sharp) else float("nan")
        out[(method, lam, seed)] = {
            "lam0": lam0,
            "plateau": plateau,
            "cv": cv,
            "diverged": diverged,
            "stable": (not diverged) and n_last >= 3 and cv <= config["stable_cv"],
            "edge": float(edges.mean()) if n_last else float("nan"),
            "edge_ratio": float(np.mean(sharp[last] / edges)) if n_last else float("nan"),
            "moved": bool(n_last) and abs(plateau / lam0 - 1.0) > config["edge_tol"],
            "grad_norm": float(gn[last].mean()) if n_last else float("nan"),
            "gd_fraction": plateau * eta / 2.0,
        }
    return out


@dataclass
class Analysis:
    """Everything the claims and figures need, computed once."""

    beta: float
    factorization: list[dict[str, Any]]
    net: dict[tuple, dict[str, Any]]
    seeds: list[int]
    lams: list[float]
    gd_tol: float

    def gd_reached(self, seed: int) -> bool:
        """Whether GD on ``seed`` ran stably to its own edge 2/η (else that seed's runs were too short to judge)."""
        gd = self.net.get(("gd", None, seed))
        return gd is not None and gd["stable"] and gd["gd_fraction"] >= 1.0 - self.gd_tol

    def dial(self, seed: int) -> list[dict[str, Any]]:
        """The unified runs of ``seed`` in ascending λ (those that exist)."""
        return [self.net[("unified", lam, seed)] for lam in self.lams if ("unified", lam, seed) in self.net]


def analyse(config: Mapping[str, Any], data: Mapping[str, Table]) -> Analysis:
    return Analysis(
        beta=max(config["eigenvalues"]),
        factorization=factorization_rows(data["factorization"]),
        net=run_stats(config, data["net_runs"], data["net_curves"]),
        seeds=list(config["seeds"]),
        lams=[float(v) for v in config["net_lams"]],
        gd_tol=float(config["gd_tol"]),
    )
