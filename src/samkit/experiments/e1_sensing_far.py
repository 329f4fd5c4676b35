"""E1 — matrix sensing far from the minimum: SAM converges for every ρ, USAM becomes unstable as ρ grows.

Over-parameterized matrix sensing (Li, Ma, Zhang 2018), ``U ∈ ℝ^{d×d}``, the same random initialization
``U0 = α·N(0, 1)/√d`` for every run, η fixed where GD converges, a grid of ρ.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from samkit.dynamics import MatrixSensing, simulate
from samkit.experiments import Claim, Experiment, Figure, Param, Table, Unit, fmt, register
from samkit.experiments._common import BLOWUP, SENSING, tolist
from samkit.experiments.plotting import METHOD_STYLE, divergence_marks, method_label, new_figure, plot_run, save_figure


def _preset(d: int, r: int, steps: int, rhos: list[float]) -> dict[str, Any]:
    return {
        "seed": 0,
        "init_seed": 1,
        "d": d,
        "r": r,
        "alpha": 1.0,
        "eta": 0.05,
        "rhos": rhos,
        "steps": steps,
        "converge_factor": 1e-3,
        "blowup": 1e12,
    }


@register
class SensingFar(Experiment):
    name = "E1"
    title = "Matrix sensing far from the minimum: SAM stable for every ρ, USAM not"
    summary = "Loss against iteration for GD, SAM and USAM over a grid of ρ from the same random initialization."
    presets = {
        "tiny": _preset(12, 2, 400, [0.01, 0.1, 0.5]),
        "quick": _preset(50, 3, 800, [0.01, 0.02, 0.05, 0.1, 0.2, 0.5]),
        "full": _preset(100, 5, 2000, [0.003, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5]),
    }
    schema = {
        **SENSING,
        "init_seed": Param(int, "seed of the random initialization U0", min=0),
        "alpha": Param(float, "scale α of the initialization U0 = α·N(0, 1)/√d", min=0, strict=True),
        "eta": Param(float, "step size of GD, SAM and USAM", min=0, strict=True),
        "rhos": Param(list[float], "the ρ grid of SAM and USAM", min=0, strict=True),
        "steps": Param(int, "iterations of each run", min=1),
        "converge_factor": Param(
            float, "a run converged if its final loss ≤ this × its initial loss", min=0, strict=True, max=1
        ),
        "blowup": BLOWUP,
    }

    def units(self, config: Mapping[str, Any]) -> list[Unit]:
        p = {k: config[k] for k in ("seed", "init_seed", "d", "r", "alpha", "eta", "rhos", "steps", "blowup")}
        return [Unit(m, {"method": m, **p}) for m in ("gd", "sam", "usam")]

    def run_unit(self, params: Mapping[str, Any]) -> dict[str, Any]:
        prob = MatrixSensing(d=params["d"], r=params["r"], seed=params["seed"])
        U0 = prob.init(params["alpha"], kind="random", seed=params["init_seed"])
        m = params["method"]
        rhos = [0.0] if m == "gd" else params["rhos"]
        every = max(1, params["steps"] // 200)
        r = simulate(
            prob,
            m,
            eta=params["eta"],
            rho=rhos,
            x0=U0,
            steps=params["steps"],
            record=("loss",),
            record_every=every,
            blowup=params["blowup"],
        )
        return {
            "rho": rhos,
            "steps": tolist(r.steps),
            "loss": tolist(r.series["loss"].T),
            "diverged": tolist(r.diverged),
            "diverged_at": tolist(r.diverged_at),
            "sharpness0": float(prob.sharpness(U0)),
        }

    def tables(self, config: Mapping[str, Any], results: Mapping[str, Mapping[str, Any]]) -> dict[str, list[dict]]:
        curves, summary = [], []
        for m, r in results.items():
            for i, rho in enumerate(r["rho"]):
                loss = r["loss"][i]
                curves += [{"method": m, "rho": rho, "step": s, "loss": v} for s, v in zip(r["steps"], loss)]
                summary.append(
                    {
                        "method": m,
                        "rho": rho,
                        "eta": config["eta"],
                        "loss0": loss[0],
                        "final_loss": loss[-1],
                        "diverged": r["diverged"][i],
                        "diverged_at": r["diverged_at"][i],
                        "sharpness0": r["sharpness0"],
                    }
                )
        return {"loss_curves": curves, "summary": summary}

    # -- claims ---------------------------------------------------------------------------------------------------
    def claims(self, config: Mapping[str, Any], data: Mapping[str, Table]) -> list[Claim]:
        return [self._sam_claim(config, data["summary"]), self._usam_claim(config, data["summary"])]

    @staticmethod
    def _setting(config: Mapping[str, Any]) -> str:
        return (
            f"d={config['d']}, r={config['r']}, m=5dr, U0=α·N(0,1)/√d with α={config['alpha']}, "
            f"η={config['eta']}, ρ∈{config['rhos']}, {config['steps']} steps"
        )

    def _sam_claim(self, config: Mapping[str, Any], s: Table) -> Claim:
        """E1.1: SAM converges at every ρ of the grid, at an η where GD converges."""
        f = config["converge_factor"]
        gd = s.where(method="gd")
        gd_ok = (not gd.first("diverged")) and gd.first("final_loss") <= f * gd.first("loss0")
        sam = s.where(method="sam")
        ratio = sam.col("final_loss") / sam.col("loss0")
        conv = (~sam.col("diverged").astype(bool)) & (sam.col("final_loss") <= f * sam.col("loss0"))
        return Claim(
            id="E1.1",
            statement="Far from the minimum, with η where GD converges, SAM converges for every ρ in the grid.",
            setting=self._setting(config),
            prediction=f"converges at every ρ: final loss ≤ {f:g}·initial loss, no divergence (GD: final/initial "
            f"{fmt(gd.first('final_loss') / gd.first('loss0'))})",
            measured="final/initial loss " + ", ".join(f"{fmt(v)} (ρ={r:g})" for r, v in zip(sam.col("rho"), ratio)),
            tolerance=f"≤ {f:g} at every ρ, and GD converges at this η",
            passed=bool(conv.all() and gd_ok),
            figure="loss_curves.png",
            data=["data/summary.csv", "data/loss_curves.csv"],
        )

    def _usam_claim(self, config: Mapping[str, Any], s: Table) -> Claim:
        """E1.2: USAM converges at the smallest ρ and fails (diverges or ends above its start) from some ρ* on."""
        us = s.where(method="usam")
        rho = us.col("rho")
        fail = us.col("diverged").astype(bool) | (us.col("final_loss") > us.col("loss0"))
        order = np.argsort(rho)
        rho, fail = rho[order], fail[order]
        k = int(np.argmax(fail))  # the first failing ρ (0 when none fails: then fail.any() is False)
        first = float(rho[k]) if fail.any() else float("nan")
        below = bool((~fail[:k]).all()) if fail.any() else "n/a"
        monotone = bool(fail[k:].all()) if fail.any() else False
        return Claim(
            id="E1.2",
            statement="USAM, from the same initialization and η, becomes unstable as ρ grows.",
            setting=self._setting(config),
            prediction="converges for the smallest ρ, diverges from some ρ* on and for every larger ρ",
            measured=f"first fails at ρ* = {fmt(first)}; converges below it: {below}; "
            f"fails at every ρ ≥ ρ*: {monotone}",
            tolerance="USAM converges at the smallest ρ and fails at every ρ ≥ ρ* (ρ* inside the grid)",
            passed=bool(fail.any() and not fail[0] and monotone),
            figure="loss_curves.png",
            data=["data/summary.csv", "data/loss_curves.csv"],
            values={"rho_star": first},
        )

    # -- figures --------------------------------------------------------------------------------------------------
    def figures(self, config: Mapping[str, Any], data: Mapping[str, Table], fig_dir: Path) -> list[Figure]:
        return [self._loss_curves_figure(config, data["loss_curves"], data["summary"], fig_dir)]

    def _loss_curves_figure(self, config: Mapping[str, Any], lc: Table, summ: Table, fig_dir: Path) -> Figure:
        fig, axes = new_figure(2, 1, width=5.4, height=4.2, sharey=True)
        cmap = ["#08306b", "#2171b5", "#6baed6", "#fd8d3c", "#e31a1c", "#800026", "#3f007d"]
        finite = lc.col("loss")[np.isfinite(lc.col("loss"))]
        lo = max(float(np.min(finite)) if len(finite) else 1e-6, 1e-30) / 3
        start = float(np.nanmax(summ.col("loss0")))
        top = 30 * start  # diverged runs leave the curves: each gets its own × between the start and the top
        g = lc.where(method="gd")
        for ax, m in zip(axes[0], ("sam", "usam")):
            ax.plot(g.col("step"), g.col("loss"), color=METHOD_STYLE["gd"]["color"], lw=2.5, alpha=0.5, label="GD")
            n_div = int(summ.where(method=m).col("diverged").astype(bool).sum())
            marks = iter(divergence_marks(n_div, start, top))
            for j, rho in enumerate(config["rhos"]):
                t = lc.where(method=m, rho=float(rho))
                row = summ.where(method=m, rho=float(rho))
                k = int(row.first("diverged_at")) if len(row) and row.first("diverged") else -1
                mark = next(marks, top) if k >= 0 else top
                style = {"color": cmap[j % len(cmap)], "lw": 1.2}
                plot_run(ax, t.col("step"), t.col("loss"), diverged_at=k, mark=mark, label=f"ρ={rho:g}", **style)
            ax.set_yscale("log")
            ax.set_ylim(lo, top)
            ax.set_xlabel("iteration t")
            ax.set_ylabel(r"training loss $f(U_t)$")
            ax.set_title(f"{method_label(m)}, η = {config['eta']}")
            ax.legend(fontsize=7, loc="upper right", framealpha=0.9)
        return Figure(
            save_figure(fig, fig_dir / "loss_curves.png"),
            "Matrix sensing far from the minimum: loss against iteration",
            f"Same random initialization (α = {config['alpha']}), same η = {config['eta']} (where GD, thick grey, "
            "converges), a grid of ρ; log-scale loss, both panels on the same axis. SAM (left) converges for "
            "every ρ (claim E1.1); USAM (right) converges for small ρ and blows up once ρ is moderate (claim "
            "E1.2): each diverged run is a dashed line ending in its own × above the starting loss, labelled with the "
            "step at which its iterate left the finite range.",
            ["E1.1", "E1.2"],
            ["data/loss_curves.csv", "data/summary.csv"],
        )
