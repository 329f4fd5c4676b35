"""E9's figures: the phase diagram at every λ with the dial's threshold, the 2-cycle amplitude against λ, the
factorization boundary against λ, and the deep net's plateau against λ with its predicted edge."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from samkit.dynamics import theory
from samkit.experiments.base import Figure, Table
from samkit.experiments.e9.analysis import Analysis
from samkit.experiments.e9.config import factorization_setting, net_setting, quadratic_setting
from samkit.experiments.plotting import METHOD_STYLE, new_figure, plt, save_figure


def _lam_colors(lams: list[float]) -> list[Any]:
    """USAM's red at λ = 0 to SAM's blue at λ = 1."""
    cmap = plt.get_cmap("coolwarm_r")
    return [cmap(0.08 + 0.84 * float(v)) for v in lams]


def phase_figure(config: Mapping[str, Any], a: Analysis, phase: Table, fig_dir: Path) -> Figure:
    lams = [float(v) for v in config["lams"]]
    fig, axes = new_figure(len(lams), 1, width=3.3, height=3.6)
    rho_line = np.logspace(np.log10(config["rho_min"]), np.log10(config["rho_max"]), 200)
    for ax, lam in zip(axes[0], lams):
        t = phase.where(lam=lam)
        eta, rho, div = t.col("eta"), t.col("rho"), t.col("diverged").astype(bool)
        ax.scatter(eta[~div], rho[~div], s=4, c="#9ecae1", marker="s", label="stable (measured)")
        ax.scatter(eta[div], rho[div], s=4, c="#fc9272", marker="s", label="diverged (measured)")
        thr = theory.unified_threshold(a.beta, torch.as_tensor(rho_line), lam).numpy()
        ax.plot(thr, rho_line, "k-", lw=1.5, label="η = 2/(β+(1−λ)ρβ²)")
        for ref, ls in ((0.0, ":"), (1.0, "--")):
            if ref != lam:
                ref_thr = theory.unified_threshold(a.beta, torch.as_tensor(rho_line), ref).numpy()
                ax.plot(ref_thr, rho_line, color="#555555", ls=ls, lw=0.9, label=f"λ={ref:g} (reference)")
        ax.set_yscale("log")
        ax.set_xlim(0, config["eta_max"])
        ax.set_xlabel("step size η")
        ax.set_title(f"λ = {lam:g}" + {0.0: " (USAM)", 1.0: " (SAM)"}.get(lam, ""))
    axes[0, 0].set_ylabel("perturbation radius ρ")
    axes[0, len(lams) // 2].legend(loc="upper right", fontsize=6, framealpha=0.9)
    return Figure(
        save_figure(fig, fig_dir / "phase_diagrams.png"),
        "Phase diagrams along the dial λ",
        "Each square is one run of unified SAM, ε = ρ((1−λ)g + λg/‖g‖); red = diverged. The solid curve is the "
        "predicted threshold η = 2/(β + (1−λ)ρβ²) (theory.unified_threshold); dotted: USAM's (λ = 0), dashed: "
        f"SAM's 2/β (λ = 1). As λ grows the unstable region shrinks back to GD's. {quadratic_setting(config)}.",
        ["E9.1"],
        ["data/phase.csv"],
    )


def cycle_figure(config: Mapping[str, Any], a: Analysis, cycle: Table, fig_dir: Path) -> Figure:
    fig, axes = new_figure(1, 1, width=7.2, height=4.2)
    ax = axes[0, 0]
    band = float(config["band"])
    lam_line = np.linspace(0.0, 1.0, 401)
    colors = plt.get_cmap("tab10")
    pairs = sorted({(float(r["eta"]), float(r["rho"])) for r in cycle.rows})
    shown: list[float] = []
    for i, (eta, rho) in enumerate(pairs):
        thr = theory.unified_threshold(a.beta, rho, torch.as_tensor(lam_line)).numpy()
        pred = theory.unified_cycle_amplitude(eta, rho, a.beta, torch.as_tensor(lam_line)).numpy()
        pred = np.where(eta < (1.0 - band) * thr, pred, np.nan)
        if not np.isfinite(pred[1:]).any():
            continue
        usam_stable = eta * (a.beta + rho * a.beta**2) < 2
        col = colors(i % 10)
        ax.plot(lam_line, pred, color=col, lw=1.1, ls="-" if usam_stable else "--", label=f"η={eta:g}, ρ={rho:g}")
        t = cycle.where(eta=eta, rho=rho)
        lam, amp, div = t.col("lam"), t.col("amplitude"), t.col("diverged").astype(bool)
        thr_at = theory.unified_threshold(a.beta, rho, torch.as_tensor(lam)).numpy()
        ok = ~div & (lam > 0) & (eta < (1.0 - band) * thr_at)
        ax.plot(lam[ok], amp[ok], "o", color=col, ms=4)
        shown += amp[ok].tolist()
    ax.plot([], [], "k-", lw=1.1, label="theory, USAM stable there")
    ax.plot([], [], "k--", lw=1.1, label="theory, USAM diverges there")
    ax.plot([], [], "ko", ms=4, label="measured |x_T|")
    ax.set_yscale("log")
    if shown:
        ax.set_ylim(min(shown) / 5, max(shown) * 5)
    ax.set_xlim(0, 1.02)
    ax.set_xlabel("normalization λ (0: USAM, 1: SAM)")
    ax.set_ylabel("2-cycle amplitude a")
    ax.legend(fontsize=6.5, ncol=1, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return Figure(
        save_figure(fig, fig_dir / "cycle_amplitude.png"),
        "Where unified SAM settles: the 2-cycle amplitude against λ",
        "Lines: a = ηρλβ/(2 − η(β + (1−λ)ρβ²)) (theory.unified_cycle_amplitude), drawn below (1 − band) × the "
        "threshold; dots: the measured |x_T|. Where USAM is stable (solid) the amplitude grows with λ from 0; where "
        "USAM diverges (dashed) it is finite only above the dial's threshold and falls as λ grows (η = 0.1, ρ = 0.1 "
        f"sits exactly on USAM's threshold: a = ηρβ/… = 0.1 for every λ). {quadratic_setting(config)}.",
        ["E9.2"],
        ["data/cycle.csv"],
    )


def factorization_figure(config: Mapping[str, Any], a: Analysis, fig_dir: Path) -> Figure:
    fig, axes = new_figure(2, 1, width=4.8, height=3.9)
    left, right = axes[0]
    rows = [r for r in a.factorization if float(r["lam"]) < 1.0]
    etas = sorted({float(r["eta"]) for r in rows})
    cmap = plt.get_cmap("viridis")
    lam_line = np.linspace(0.0, max([float(r["lam"]) for r in rows] + [0.0]), 100)
    for i, eta in enumerate(etas):
        col = cmap(i / max(1, len(etas) - 1))
        sel = sorted((r for r in rows if float(r["eta"]) == eta), key=lambda r: float(r["lam"]))
        lam = np.array([float(r["lam"]) for r in sel])
        left.plot(lam, [float(r["rho_star"]) / eta for r in sel], "o", color=col, ms=4, label=f"η={eta:g}")
        ref = sel[0]["ref"] if sel else np.nan
        pred = theory.scalar_factorization_unified_boundary(eta, torch.as_tensor(lam_line), ref).numpy()
        left.plot(lam_line, pred / eta, "-", color=col, lw=0.9)
        inner = [r for r in sel if 0.0 < float(r["lam"]) < 1.0]
        right.plot([float(r["lam"]) for r in inner], [r["ratio"] for r in inner], "o-", color=col, ms=4, lw=0.8)
    left.plot([], [], "k-", lw=0.9, label="ρ*(0)/(1−λ) (theory)")
    left.set_yscale("log")
    left.set_xlabel("normalization λ")
    left.set_ylabel("divergence boundary ρ*/η")
    left.legend(fontsize=7)
    tol = float(config["boundary_tol"])
    right.axhspan(1 - tol, 1 + tol, color="#e5f5e0", zorder=0, label=f"±{tol:g} (E9.3)")
    right.axhline(1.0, color="k", lw=0.8)
    right.set_xlabel("normalization λ")
    right.set_ylabel("(1−λ) ρ*(λ) / ρ*(0)")
    right.set_xlim(0, 1)
    right.legend(fontsize=7)
    never = [f"{float(r['eta']):g}" for r in a.factorization if float(r["lam"]) == 1.0 and not r["diverged_at_sam_rho"]]
    return Figure(
        save_figure(fig, fig_dir / "factorization_boundary.png"),
        "Scalar factorization: USAM's divergence boundary moves out as 1/(1−λ)",
        "Left: the radius ρ* beyond which unified SAM diverges (bisection), over η, against λ, with the prediction "
        "ρ*(0)/(1−λ). Right: (1−λ)ρ*(λ)/ρ*(0), which the prediction sets to 1; the normalized part, neglected by it, "
        "lowers the boundary slightly as κ = λρ*√η grows (largest η, λ near 1). "
        + (
            f"SAM (λ = 1) did not diverge at ρ = {config['sam_rho_max']:g} at η ∈ {{{', '.join(never)}}}. "
            if never
            else ""
        )
        + f"{factorization_setting(config)}.",
        ["E9.3"],
        ["data/factorization.csv"],
    )


def plateau_figure(config: Mapping[str, Any], a: Analysis, curves: Table, fig_dir: Path) -> Figure:
    fig, axes = new_figure(2, 1, width=5.0, height=4.0)
    left, right = axes[0]
    eta = float(config["net_eta"])
    lams, colors = a.lams, _lam_colors(a.lams)
    for j, s in enumerate(a.seeds):
        runs = [(lam, a.net[("unified", lam, s)]) for lam in lams if ("unified", lam, s) in a.net]
        x = np.array([lam for lam, _ in runs]) + 0.012 * (j - (len(a.seeds) - 1) / 2)
        left.plot(
            x,
            [r["plateau"] for _, r in runs],
            "o",
            color="k",
            ms=3.5,
            alpha=0.8,
            label="measured plateau (per seed)" if j == 0 else None,
        )
        left.plot(
            x,
            [r["edge"] for _, r in runs],
            "_",
            color="#2ca02c",
            ms=10,
            mew=2,
            label="predicted edge (mean over the last third)" if j == 0 else None,
        )
    left.axhline(2.0 / eta, color=METHOD_STYLE["gd"]["color"], ls="--", lw=1.0, label="2/η (GD's edge)")
    left.set_xlabel("normalization λ (0: USAM, 1: SAM)")
    left.set_ylabel("sharpness plateau")
    left.set_ylim(0, 1.15 * 2.0 / eta)
    left.legend(fontsize=7, loc="lower left")
    seed = a.seeds[0]
    gd = curves.where(method="gd", seed=seed)
    right.plot(gd.col("step"), gd.col("sharpness"), color=METHOD_STYLE["gd"]["color"], lw=1.2, label="GD")
    for lam, col in zip(lams, colors):
        c = curves.where(method="unified", lam=lam, seed=seed)
        if not len(c):
            continue
        step = c.col("step")
        edge = theory.unified_sharpness_edge(eta, config["net_rho"], lam, torch.as_tensor(c.col("grad_norm"))).numpy()
        right.plot(step, c.col("sharpness"), color=col, lw=1.3, label=f"λ={lam:g}")
        right.plot(step, edge, color=col, ls=":", lw=1.0)
    right.plot([], [], "k:", lw=1.0, label="its edge (‖g_t‖)")
    right.axhline(2.0 / eta, color=METHOD_STYLE["gd"]["color"], ls="--", lw=1.0)
    right.set_xlabel("step t")
    right.set_ylabel(f"top Hessian eigenvalue (seed {seed})")
    right.set_ylim(0, 1.15 * 2.0 / eta)
    right.legend(fontsize=7, loc="lower right", ncol=2)
    return Figure(
        save_figure(fig, fig_dir / "plateau.png"),
        "Deep net: the sharpness plateau falls along the dial, at its predicted edge",
        "Left: the plateau (mean top Hessian eigenvalue over the last third) of every seed against λ, with the "
        "predicted edge — the root of η·s·(1 + ρ·s·((1−λ) + λ/‖g_t‖)) = 2, averaged over the same measurements "
        "(theory.unified_sharpness_edge). Right: the sharpness during training on one seed, each λ with its edge "
        f"(dotted). {net_setting(config)}.",
        ["E9.4", "E9.5"],
        ["data/net_runs.csv", "data/net_curves.csv"],
    )


def figures(config: Mapping[str, Any], a: Analysis, data: Mapping[str, Table], fig_dir: Path) -> list[Figure]:
    return [
        phase_figure(config, a, data["phase"], fig_dir),
        cycle_figure(config, a, data["cycle"], fig_dir),
        factorization_figure(config, a, fig_dir),
        plateau_figure(config, a, data["net_curves"], fig_dir),
    ]
