"""E7's figures, drawn from the analysis (:mod:`samkit.experiments.e7.analysis`) and the saved tables."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.ticker import FormatStrFormatter

from samkit.experiments.base import Figure, Table, fmt
from samkit.experiments.e7.analysis import ModelAnalysis, Point, curves_by_run
from samkit.experiments.e7.config import METHODS, setting
from samkit.experiments.plotting import METHOD_STYLE, method_label, new_figure, plt, save_figure


def _decades(lo: float, hi: float) -> float:
    return math.log10(hi / lo) if lo > 0 and hi > 0 else float("nan")


def _window(points: Sequence[Point], ok: Any) -> str:
    """The ρ where ``ok(point)`` holds, as 'ρ ∈ [a, b] (d decades)' over its extremes (or 'none')."""
    rhos = [p.rho for p in points if ok(p)]
    if not rhos:
        return "none"
    gaps = len(rhos) < len([p for p in points if min(rhos) <= p.rho <= max(rhos)])
    return (
        f"ρ ∈ [{fmt(min(rhos))}, {fmt(max(rhos))}] ({_decades(min(rhos), max(rhos)):.1f} decades"
        + (", with gaps" if gaps else "")
        + ")"
    )


def _accuracy_axes(ax: Any, diverged: str, xlabel: str, title: str) -> None:
    """Finish a test-accuracy panel (log x, 0–100%); ``diverged``: the legend text of the × drawn, '' if none is."""
    if diverged:  # the legend shows the marker only where one is drawn
        ax.scatter([], [], marker="x", s=80, color="k", label=f"{diverged} (drawn at 10%)")
    ax.set_xscale("log")
    ax.set_ylim(0, 100)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="lower left")


def _usam_top(a: ModelAnalysis) -> Point | None:
    """USAM's largest ρ at which every seed trains (the curves of figure norms.png are drawn there)."""
    t = [p for p in a.points("usam") if p.trains]
    return max(t, key=lambda p: p.rho) if t else None


def figures(
    config: Mapping[str, Any], an: Mapping[str, ModelAnalysis], data: Mapping[str, Table], fig_dir: Path
) -> list[Figure]:  # noqa: E501
    """Accuracy against ρ, the realised perturbation, ‖g‖ and ‖ε‖ over training, sharpness at matched loss, the
    Hessian spectrum and the learning-rate sweep."""
    models = list(config["models"])
    where = setting(config, models[0]) + (f" (and the same for {', '.join(models[1:])})" if len(models) > 1 else "")
    drop, wp = float(config["collapse_drop"]), float(config["window_points"])

    def ids(*k: int) -> list[str]:
        return [f"E7.{i}-{m}" for m in models for i in k]

    return [
        Figure(
            _fig_accuracy(an, config, fig_dir),
            "Test accuracy against ρ",
            "Final test accuracy (mean ± std over seeds; a diverged seed counts as 10%, chance) of SAM and USAM "
            f"against ρ, one panel per model. Grey line: SGD (mean over seeds); dotted: SGD − {drop:g} points, "
            "the 'fails' threshold (each run is judged against SGD on its own seed). Crosses: at least one seed "
            "diverged. E7.1 compares each seed's stable range (the ρ up to its first failure), E7.2 the ρ ≤ "
            f"{config['stable_rho']:g} where only one method fails. Windows in raw ρ (report only) — "
            + _windows_text(an, wp)
            + f". {where}.",
            ids(1, 2, 4),
            ["data/runs.csv", "data/summary.csv"],
        ),
        Figure(
            _fig_perturbation(an, fig_dir),
            "Realised perturbation (report only)",
            "Left: median last-epoch ‖ε‖ against ρ (filled: every seed trains at that ρ; open: some seed failed); "
            "the dashed lines mark r_max, the largest of the filled points. SAM's ‖ε‖ is ρ; USAM's is ρ‖g‖, tiny "
            "once ‖g‖ has decayed, so r_max(SAM)/r_max(USAM) is large even where both train at the same ρ: it "
            "is shown, not judged. Right: test accuracy of each finite run against its realised mean ‖ε‖ over "
            "training (lines join the per-ρ means). " + _rmax_text(an),
            [],
            ["data/curves.csv", "data/runs.csv"],
        ),
        Figure(
            _fig_norms(an, config, data, fig_dir),
            "‖g‖ and ‖ε‖ over training",
            "Left: epoch-mean mini-batch ‖g‖ of SGD, SAM and USAM at USAM's largest ρ where every seed trains "
            "(first seed). Right: epoch-mean ‖ε‖ of USAM at every ρ where it did not diverge (first seed; colour = "
            "ρ) and of SAM at that ρ (dashed). The lr decays to 0 over the last "
            f"{config['decay_frac']:g} of the epochs (shaded). " + _dyn_text(an),
            ids(0),
            ["data/curves.csv"],
        ),
        Figure(
            _fig_sharpness(an, config, fig_dir),
            "Sharpness at matched training loss",
            "Final top Hessian eigenvalue relative to SGD's on the same seed against the final training loss "
            "relative to SGD's, one point per ρ at which every seed of the method trains (medians over seeds of "
            f"the paired ratios; labels: ρ). E7.3 judges per seed the runs left of the dotted line (loss ≤ "
            f"{config['loss_match']:g} × SGD's); dashed: λ/λ_SGD = {config['flat_ratio']:g}.",
            ids(3),
            ["data/runs.csv", "data/summary.csv"],
        ),
        Figure(
            _fig_spectrum(config, data, fig_dir),
            "Hessian spectrum at the end (report only)",
            "Eigenvalue density of the training loss's Hessian of the final SGD, SAM and USAM models (first seed; "
            "SAM and USAM at the grid ρ nearest " + f"{config['density_rho']:g}" + "), by stochastic Lanczos "
            f"quadrature ({config['density_probes']} probes × {config['density_steps']} steps, "
            "samkit.sharpness.spectral_density) on the eigenvalue-measurement images; Gaussian-smoothed, log "
            "density scale. A diverged run has no spectrum. " + _spectrum_text(data),
            [],
            ["data/spectrum.csv"],
        ),
        Figure(
            _fig_lr(config, data, fig_dir),
            "Learning-rate sweep (report only)",
            f"Final test accuracy against the learning rate at ρ = {config['lr_sweep_rho']:g} (seeds "
            f"{config['lr_sweep_seeds']}), SGD at the same learning rates; crosses: diverged (drawn at 10%). "
            + _lr_text(config, data),
            [],
            ["data/runs.csv"],
        ),
    ]


def _windows_text(an: Mapping[str, ModelAnalysis], wp: float) -> str:
    parts = []
    for model, a in an.items():
        floor = a.sgd_acc - wp
        for m in METHODS:
            pts = a.points(m)
            near = _window(pts, lambda p, floor=floor: p.trains and np.nanmean(p.acc) >= floor)
            parts.append(
                f"{model} {m.upper()}: every seed trains at {_window(pts, lambda p: p.trains)}, within {wp:g} point "
                f"of SGD at {near}"
            )
    return "; ".join(parts)


def _rmax_text(an: Mapping[str, ModelAnalysis]) -> str:
    return (
        "; ".join(f"{model}: r_max SAM {fmt(a.r_max('sam'))}, USAM {fmt(a.r_max('usam'))}" for model, a in an.items())
        + "."
    )  # noqa: E501


def _dyn_text(an: Mapping[str, ModelAnalysis]) -> str:
    parts = []
    for model, a in an.items():
        top = _usam_top(a)
        parts.append(
            f"{model}: USAM's ‖ε‖ max/min = {top.eps_dyn:.1f} at ρ = {fmt(top.rho)} (median over seeds)"
            if top is not None
            else f"{model}: USAM trains on every seed at no ρ"
        )
    return "; ".join(parts) + "."


def _sweep_runs(config: Mapping[str, Any], data: Mapping[str, Table], model: str, m: str, lr: float) -> Table:
    rho = 0.0 if m == "sgd" else float(config["lr_sweep_rho"])
    s = data["runs"].where(model=model, method=m, lr=lr, rho=rho)
    return Table([r for r in s.rows if int(r["seed"]) in config["lr_sweep_seeds"]])


def _lr_text(config: Mapping[str, Any], data: Mapping[str, Table]) -> str:
    parts = []
    for model in config["models"]:
        for m in ("sgd", *METHODS):
            bits = []
            for lr in sorted({float(x) for x in config["lr_sweep"]}):
                s = _sweep_runs(config, data, model, m, lr)
                if not len(s):
                    continue
                div = s.col("diverged").astype(bool)
                acc = 100.0 * s.col("test_acc")
                bits.append(
                    f"lr {lr:g}: " + (f"{int(div.sum())}/{len(s)} diverged" if div.any() else f"{np.mean(acc):.1f}%")
                )
            parts.append(f"{model} {m.upper()}: " + ", ".join(bits))
    return "; ".join(parts) + "."


def _fig_accuracy(an: Mapping[str, ModelAnalysis], config: Mapping[str, Any], fig_dir: Path) -> str:
    fig, axes = new_figure(len(an), 1, width=5.4, height=4.0)
    drop = float(config["collapse_drop"])
    for ax, (model, a) in zip(axes[0], an.items()):
        any_div = False
        for m in METHODS:
            pts = a.points(m)
            if not pts:
                continue
            rho = np.array([p.rho for p in pts])
            acc = [np.where(p.diverged, 10.0, np.nan_to_num(p.acc, nan=10.0)) for p in pts]
            mean = np.array([x.mean() for x in acc])
            std = np.array([x.std() for x in acc])
            div = np.array([bool(p.diverged.any()) for p in pts])
            st = METHOD_STYLE[m]
            ax.errorbar(rho, mean, yerr=std, color=st["color"], marker="o", ms=4, capsize=3, label=method_label(m))
            if div.any():
                any_div = True
                ax.scatter(rho[div], mean[div], marker="x", s=80, color=st["color"], zorder=5)
        if a.seeds:
            ax.axhline(a.sgd_acc, color=METHOD_STYLE["gd"]["color"], lw=1.2, label=f"SGD ({a.sgd_acc:.1f}%)")
            ax.axhline(
                a.sgd_acc - drop, color=METHOD_STYLE["gd"]["color"], lw=1, ls=":", label=f"SGD − {drop:g} points"
            )
        _accuracy_axes(
            ax,
            "a seed diverged" if any_div else "",
            "perturbation radius ρ",
            f"{model}, lr = {config['lr']:g}, {len(a.seeds)} seed(s)",
        )
    return save_figure(fig, fig_dir / "accuracy_vs_rho.png")


def _fig_perturbation(an: Mapping[str, ModelAnalysis], fig_dir: Path) -> str:
    fig, axes = new_figure(2, len(an), width=5.0, height=3.9)
    for row, (model, a) in enumerate(an.items()):
        left, right = axes[row, 0], axes[row, 1]
        for m in METHODS:
            st = METHOD_STYLE[m]
            pts = [p for p in a.points(m) if math.isfinite(p.eps_last) and p.eps_last > 0]
            left.plot([p.rho for p in pts], [p.eps_last for p in pts], color=st["color"], lw=1, alpha=0.6)
            for group, filled in (([p for p in pts if p.trains], True), ([p for p in pts if not p.trains], False)):
                if group:
                    left.scatter(
                        [p.rho for p in group],
                        [p.eps_last for p in group],
                        s=30,
                        facecolors=st["color"] if filled else "none",
                        edgecolors=st["color"],
                        label=f"{method_label(m)}: {'trains' if filled else 'a seed failed'}",
                    )
            rmax = a.r_max(m)
            if math.isfinite(rmax):
                left.axhline(rmax, color=st["color"], ls="--", lw=1, label=f"r_max {m.upper()} = {fmt(rmax)}")
            xs, ys, mx, my = [], [], [], []
            for p in pts:
                fin = np.isfinite(p.acc)
                if fin.any() and math.isfinite(p.eps_mean):
                    xs += [p.eps_mean] * int(fin.sum())
                    ys += list(p.acc[fin])
                    mx.append(p.eps_mean)
                    my.append(float(np.mean(p.acc[fin])))
            if xs:
                right.scatter(xs, ys, color=st["color"], s=14, alpha=0.7)
                right.plot(mx, my, color=st["color"], lw=1.2, marker="o", ms=3, label=method_label(m))
        if a.seeds:
            right.axhline(a.sgd_acc, color=METHOD_STYLE["gd"]["color"], lw=1, label="SGD")
        for ax in (left, right):
            ax.set_xscale("log")
            ax.legend(fontsize=7)
        left.set_yscale("log")
        left.set_xlabel("perturbation radius ρ")
        left.set_ylabel("last-epoch mean ‖ε‖ (median over seeds)")
        left.set_title(f"{model}: realised late perturbation")
        right.set_xlabel("mean ‖ε‖ over training (per run)")
        right.set_ylabel("test accuracy (%)")
        right.set_title(f"{model}: accuracy against the realised ‖ε‖")
    return save_figure(fig, fig_dir / "perturbation.png")


def _fig_norms(
    an: Mapping[str, ModelAnalysis], config: Mapping[str, Any], data: Mapping[str, Table], fig_dir: Path
) -> str:  # noqa: E501
    curves = curves_by_run(data["curves"])
    lr, seed0 = float(config["lr"]), int(config["seeds"][0])
    fig, axes = new_figure(2, len(an), width=5.0, height=3.8)
    for row, (model, a) in enumerate(an.items()):
        left, right = axes[row, 0], axes[row, 1]
        top = _usam_top(a)
        rho_u = top.rho if top is not None else None
        for m, rho in (("sgd", 0.0), ("sam", rho_u), ("usam", rho_u)):
            c = curves.get((model, m, lr, rho, seed0)) if rho is not None else None
            if c is None:
                continue
            lab = "SGD" if m == "sgd" else f"{method_label(m)}, ρ = {rho:.2g}"
            left.plot(c["epoch"], c["grad_norm"], color=METHOD_STYLE["gd" if m == "sgd" else m]["color"], label=lab)
        finite = [k for k in range(len(a.grid)) if (r := a.runs.get(("usam", k, seed0))) is not None and not r.diverged]
        cmap = plt.get_cmap("Reds")
        for i, k in enumerate(finite):
            c = curves.get((model, "usam", lr, a.grid[k], seed0))
            if c is not None:
                color = cmap(0.35 + 0.65 * i / max(1, len(finite) - 1))
                right.plot(c["epoch"], c["eps_norm"], color=color, lw=1.2, label=f"USAM ρ = {a.grid[k]:.2g}")
        c = curves.get((model, "sam", lr, rho_u, seed0)) if rho_u is not None else None
        if c is not None:
            right.plot(
                c["epoch"], c["eps_norm"], color=METHOD_STYLE["sam"]["color"], ls="--", label=f"SAM ρ = {rho_u:.2g}"
            )
        e = float(config["epochs"])
        for ax in (left, right):
            if config["schedule"] == "decay":
                ax.axvspan(e * (1 - float(config["decay_frac"])), e, color="#eeeeee", zorder=0)
            ax.set_yscale("log")
            ax.set_xlabel("epoch")
            ax.legend(fontsize=7, ncol=2 if ax is right else 1)
        left.set_ylabel("epoch-mean mini-batch ‖g‖")
        left.set_title(f"{model}: gradient norm")
        right.set_ylabel("epoch-mean ‖ε‖")
        right.set_title(f"{model}: perturbation length")
    return save_figure(fig, fig_dir / "norms.png")


def _fig_sharpness(an: Mapping[str, ModelAnalysis], config: Mapping[str, Any], fig_dir: Path) -> str:
    fig, axes = new_figure(len(an), 1, width=5.4, height=4.0)
    for ax, (model, a) in zip(axes[0], an.items()):
        drawn = False
        for m in METHODS:
            pts = [p for p in a.points(m) if p.trains and math.isfinite(p.lam_ratio) and p.loss_ratio > 0]
            if not pts:
                continue
            x, y = [p.loss_ratio for p in pts], [p.lam_ratio for p in pts]
            color = METHOD_STYLE[m]["color"]
            ax.scatter(x, y, color=color, s=28, label=method_label(m))
            for xi, yi, p in zip(x, y, pts):
                ax.annotate(
                    f"{p.rho:.2g}", (xi, yi), xytext=(4, 3), textcoords="offset points", fontsize=7, color=color
                )
            drawn = True
        if drawn:
            ax.axvline(float(config["loss_match"]), color="k", ls=":", lw=1, label="matched-loss limit")
            ax.axhline(float(config["flat_ratio"]), color="k", ls="--", lw=1, label="flatness threshold")
            ax.scatter([1.0], [1.0], marker="*", s=120, color=METHOD_STYLE["gd"]["color"], zorder=5, label="SGD")
            ax.set_xscale("log")
            # ratios on a log axis: 0.5 and 2 are equally far from SGD, and one sharp outlier cannot squash the rest
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
            ax.yaxis.set_minor_formatter(FormatStrFormatter("%g"))
            ax.legend(fontsize=7)
        ax.set_xlabel("final training loss / SGD's (same seed)")
        ax.set_ylabel("final λmax / SGD's (same seed)")
        ax.set_title(f"{model}: sharpness at the end")
    return save_figure(fig, fig_dir / "sharpness.png")


def _spectrum_text(data: Mapping[str, Table]) -> str:
    t = data.get("spectrum")
    if t is None or not len(t):
        return "No spectrum was measured."
    parts = []
    for model in t.unique("model"):
        for m in ("sgd", *METHODS):
            r = t.where(model=model, method=m)
            if len(r):
                parts.append(
                    f"{model} {method_label(m) if m != 'sgd' else 'SGD'}: largest node {float(np.max(r.col('node'))):.3g}"
                )
    return "; ".join(parts) + "."


def _fig_spectrum(config: Mapping[str, Any], data: Mapping[str, Table], fig_dir: Path) -> str:
    t = data.get("spectrum", Table([]))
    models = list(config["models"])
    fig, axes = new_figure(len(models), 1, width=5.4, height=3.8)
    for ax, model in zip(axes[0], models):
        mine = t.where(model=model) if len(t) else t
        if not len(mine):
            ax.text(0.5, 0.5, "no spectrum (runs diverged or not measured)", ha="center", transform=ax.transAxes)
        else:
            nodes_all = mine.col("node")
            lo, hi = float(nodes_all.min()), float(nodes_all.max())
            sigma = 0.01 * (hi - lo) if hi > lo else 1.0
            grid = np.linspace(lo - 6 * sigma, hi + 6 * sigma, 800)
            for m in ("sgd", *METHODS):
                r = mine.where(method=m)
                if not len(r):
                    continue
                x, w = r.col("node"), r.col("weight")
                n_probes = len(set(r.col("probe").tolist()))
                dens = (w[None, :] * np.exp(-0.5 * ((grid[:, None] - x[None, :]) / sigma) ** 2)).sum(1)
                dens /= n_probes * sigma * math.sqrt(2 * math.pi)
                rho = float(r.first("rho"))
                label = "SGD" if m == "sgd" else f"{method_label(m)}, ρ = {rho:.2g}"
                style = METHOD_STYLE["gd" if m == "sgd" else m]
                ax.plot(
                    grid,
                    np.maximum(dens, 1e-8),
                    color=style["color"],
                    lw=1.3,
                    label=label,
                    ls="--" if m == "sgd" else "-",
                )
            ax.set_yscale("log")
            ax.set_ylim(1e-6, None)
            ax.legend(fontsize=7)
        ax.set_xlabel("Hessian eigenvalue")
        ax.set_ylabel("density (smoothed)")
        ax.set_title(f"{model}: Hessian spectrum at the end")
    return save_figure(fig, fig_dir / "spectrum.png")


def _fig_lr(config: Mapping[str, Any], data: Mapping[str, Table], fig_dir: Path) -> str:
    models = list(config["models"])
    fig, axes = new_figure(len(models), 1, width=5.0, height=3.8)
    lrs = sorted({float(x) for x in config["lr_sweep"]})
    for ax, model in zip(axes[0], models):
        any_div = False
        for m in ("sgd", *METHODS):
            xs, mean, div = [], [], []
            for lr in lrs:
                s = _sweep_runs(config, data, model, m, lr)
                if not len(s):
                    continue
                d = s.col("diverged").astype(bool)
                acc = np.where(d, 10.0, np.nan_to_num(100.0 * s.col("test_acc"), nan=10.0))
                xs.append(lr)
                mean.append(float(acc.mean()))
                div.append(bool(d.any()))
            if not xs:
                continue
            color = METHOD_STYLE["gd" if m == "sgd" else m]["color"]
            label = "SGD" if m == "sgd" else f"{method_label(m)}, ρ = {config['lr_sweep_rho']:g}"
            ax.plot(xs, mean, color=color, marker="o", ms=4, ls="--" if m == "sgd" else "-", label=label)
            dx = [x for x, d in zip(xs, div) if d]
            if dx:
                any_div = True
                ax.scatter(dx, [y for y, d in zip(mean, div) if d], marker="x", s=80, color=color, zorder=5)
        _accuracy_axes(ax, "diverged" if any_div else "", "learning rate η", f"{model}: learning-rate sweep")
        ax.set_xticks(lrs, [f"{x:g}" for x in lrs])
        ax.minorticks_off()
    return save_figure(fig, fig_dir / "lr_sweep.png")
