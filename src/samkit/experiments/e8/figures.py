"""E8's figure: λ against the step with each method's predicted edge."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from samkit.experiments.base import Figure, Table
from samkit.experiments.e8.analysis import Analysis
from samkit.experiments.e8.config import METHODS, setting, stability_edge
from samkit.experiments.plotting import METHOD_STYLE, method_label, new_figure, save_figure


def figures(config: Mapping[str, Any], a: Analysis, data: Mapping[str, Table], fig_dir: Path) -> list[Figure]:
    """λ against the step, one panel per η, with each method's predicted edge."""
    curves = data["curves"]
    stats = a.stats
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
                    alpha, lam_label = (1.0, label) if j == 0 else (0.55, None)
                    ax.plot(c.col("step"), c.col("lam"), color=color, lw=1.3, alpha=alpha, label=lam_label)
                    if method == "sam":
                        edge = [stability_edge(eta, rho / g) if g > 0 else np.nan for g in c.col("grad_norm")]
                        edge_label = "its ‖g_t‖ edge" if j == 0 else None
                        ax.plot(c.col("step"), edge, color=color, ls=":", lw=1, alpha=0.9, label=edge_label)
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
            f"{setting(config)}.",
            ["E8.1", "E8.2", "E8.3"],
            ["data/curves.csv"],
        )
    ]
