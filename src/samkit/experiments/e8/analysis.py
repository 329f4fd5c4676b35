"""E8's analysis of the saved curves, computed once per finalize and handed to the claims and the figures: per run
its initial λ, plateau (mean λ over the last third of its steps), stability, the edge it is compared with, and for
SAM the mean of λ_t / edge(ρ/‖g_t‖) over the last third; per (η, seed) whether GD reached its own edge."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from samkit.experiments.base import Table
from samkit.experiments.e8.config import stability_edge


def run_stats(config: Mapping[str, Any], data: Mapping[str, Table]) -> dict[tuple, dict[str, Any]]:
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


@dataclass
class Analysis:
    """Every run's statistics (key ``(method, η, ρ, seed)``) and the config's tolerance of the GD control."""

    stats: dict[tuple, dict[str, Any]]
    seeds: list[int]
    plateau_tol: float

    def runs(self, method: str, seed: int | None = None) -> dict[tuple, dict[str, Any]]:
        """The runs of ``method`` (of one seed, when given)."""
        return {k: s for k, s in self.stats.items() if k[0] == method and (seed is None or k[3] == seed)}

    def gd_reached(self, eta: float, seed: int) -> bool:
        """Whether GD at (η, seed) ran stably to its own edge (else the runs were too short to judge USAM or SAM)."""
        gd = [s for (m, e, _, sd), s in self.stats.items() if m == "gd" and math.isclose(e, eta) and sd == seed]
        return bool(gd) and all(s["stable"] and s["gd_fraction"] >= 1.0 - self.plateau_tol for s in gd)

    def judged_seeds(self, method: str) -> list[int]:
        """The seeds on which GD reached its edge at every η where ``method`` runs (the others cannot be judged)."""
        return [
            s
            for s in self.seeds
            if self.runs(method, s) and all(self.gd_reached(k[1], s) for k in self.runs(method, s))
        ]


def analyse(config: Mapping[str, Any], data: Mapping[str, Table]) -> Analysis:
    """:func:`run_stats` of every run, with the config's seeds and tolerance; each USAM and SAM run also gets
    ``paired``: its plateau/edge divided by GD's plateau/(2/η) at the same η and seed (NaN without that GD run) —
    edge-of-stability runs hover slightly above their edge, by the same factor for GD and USAM on one seed."""
    stats = run_stats(config, data)
    for (m, eta, _, seed), st in stats.items():
        gd = [g for (gm, ge, _, gs), g in stats.items() if gm == "gd" and math.isclose(ge, eta) and gs == seed]
        st["paired"] = st["ratio"] / gd[0]["ratio"] if m != "gd" and gd else float("nan")
    return Analysis(stats, list(config["seeds"]), float(config["plateau_tol"]))
