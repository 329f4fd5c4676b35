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
from samkit.experiments import Claim, Experiment, Figure, Table, Unit, fmt, register
from samkit.experiments._common import tolist
from samkit.experiments.plotting import METHOD_STYLE, method_label, new_figure, save_figure


def _preset(d: int, r: int, steps: int, rhos: list[float]) -> dict[str, Any]:
    return {"seed": 0, "init_seed": 1, "d": d, "r": r, "alpha": 1.0, "eta": 0.05, "rhos": rhos, "steps": steps,
            "converge_factor": 1e-3, "blowup": 1e12}  # fmt: skip


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

    def units(self, config: Mapping[str, Any]) -> list[Unit]:
        p = {k: config[k] for k in ("seed", "init_seed", "d", "r", "alpha", "eta", "rhos", "steps", "blowup")}
        return [Unit(m, {"method": m, **p}) for m in ("gd", "sam", "usam")]

    def run_unit(self, params: Mapping[str, Any]) -> dict[str, Any]:
        prob = MatrixSensing(d=params["d"], r=params["r"], seed=params["seed"])
        U0 = prob.init(params["alpha"], kind="random", seed=params["init_seed"])
        m = params["method"]
        rhos = [0.0] if m == "gd" else params["rhos"]
        r = simulate(prob, m, eta=params["eta"], rho=rhos, x0=U0, steps=params["steps"], record=("loss",),
                     record_every=max(1, params["steps"] // 200), blowup=params["blowup"])  # fmt: skip
        return {"rho": rhos, "steps": tolist(r.steps), "loss": tolist(r.series["loss"].T), "diverged": tolist(r.diverged),
                "diverged_at": tolist(r.diverged_at), "sharpness0": float(prob.sharpness(U0))}  # fmt: skip

    def tables(self, config: Mapping[str, Any], results: Mapping[str, Mapping[str, Any]]) -> dict[str, list[dict]]:
        curves, summary = [], []
        for m, r in results.items():
            for i, rho in enumerate(r["rho"]):
                for s, loss in zip(r["steps"], r["loss"][i]):
                    curves.append({"method": m, "rho": rho, "step": s, "loss": loss})
                summary.append({"method": m, "rho": rho, "eta": config["eta"], "loss0": r["loss"][i][0],
                                "final_loss": r["loss"][i][-1], "diverged": r["diverged"][i],
                                "diverged_at": r["diverged_at"][i], "sharpness0": r["sharpness0"]})  # fmt: skip
        return {"loss_curves": curves, "summary": summary}

    def claims(self, config: Mapping[str, Any], data: Mapping[str, Table]) -> list[Claim]:
        s = data["summary"]
        f = config["converge_factor"]
        setting = (f"d={config['d']}, r={config['r']}, m=5dr, U0=α·N(0,1)/√d with α={config['alpha']}, "
                   f"η={config['eta']}, ρ∈{config['rhos']}, {config['steps']} steps")  # fmt: skip
        gd = s.where(method="gd")
        gd_ok = (not gd.first("diverged")) and gd.first("final_loss") <= f * gd.first("loss0")
        sam = s.where(method="sam")
        conv = (~sam.col("diverged").astype(bool)) & (sam.col("final_loss") <= f * sam.col("loss0"))
        c1 = Claim(
            id="E1.1",
            statement="Far from the minimum, with η where GD converges, SAM converges for every ρ in the grid.",
            setting=setting,
            prediction=f"converges at every ρ: final loss ≤ {f:g}·initial loss, no divergence (GD: final/initial "
            f"{fmt(gd.first('final_loss') / gd.first('loss0'))})",
            measured="final/initial loss " + ", ".join(f"{fmt(v)} (ρ={r:g})" for r, v in
                                                     zip(sam.col("rho"), sam.col("final_loss") / sam.col("loss0"))),
            tolerance=f"≤ {f:g} at every ρ, and GD converges at this η",
            passed=bool(conv.all() and gd_ok),
            figure="loss_curves.png",
            data=["data/summary.csv", "data/loss_curves.csv"],
        )  # fmt: skip
        us = s.where(method="usam")
        rho = us.col("rho")
        fail = us.col("diverged").astype(bool) | (us.col("final_loss") > us.col("loss0"))
        order = np.argsort(rho)
        rho, fail = rho[order], fail[order]
        first = float(rho[int(np.argmax(fail))]) if fail.any() else float("nan")
        monotone = bool(fail[int(np.argmax(fail)) :].all()) if fail.any() else False
        c2 = Claim(
            id="E1.2",
            statement="USAM, from the same initialization and η, becomes unstable as ρ grows.",
            setting=setting,
            prediction="converges for the smallest ρ, diverges from some ρ* on and for every larger ρ",
            measured=f"first fails at ρ* = {fmt(first)}; converges below it: {bool((~fail[: int(np.argmax(fail))]).all()) if fail.any() else 'n/a'}; "
            f"fails at every ρ ≥ ρ*: {monotone}",
            tolerance="USAM converges at the smallest ρ and fails at every ρ ≥ ρ* (ρ* inside the grid)",
            passed=bool(fail.any() and not fail[0] and monotone),
            figure="loss_curves.png",
            data=["data/summary.csv", "data/loss_curves.csv"],
            values={"rho_star": first},
        )
        return [c1, c2]

    def figures(self, config: Mapping[str, Any], data: Mapping[str, Table], fig_dir: Path) -> list[Figure]:
        lc, summ = data["loss_curves"], data["summary"]
        fig, axes = new_figure(2, 1, width=5.4, height=4.2, sharey=True)
        cmap = ["#08306b", "#2171b5", "#6baed6", "#fd8d3c", "#e31a1c", "#800026", "#3f007d"]
        finite = lc.col("loss")[np.isfinite(lc.col("loss"))]
        lo = max(float(np.min(finite)) if len(finite) else 1e-6, 1e-30) / 3
        top = 30 * float(np.nanmax(summ.col("loss0")))  # diverged runs leave the axis: marked with × at the top
        for ax, m in zip(axes[0], ("sam", "usam")):
            g = lc.where(method="gd")
            ax.plot(g.col("step"), g.col("loss"), color=METHOD_STYLE["gd"]["color"], lw=2.5, alpha=0.5, label="GD")
            for j, rho in enumerate(config["rhos"]):
                t = lc.where(method=m, rho=float(rho))
                row = summ.where(method=m, rho=float(rho))
                st, loss = t.col("step"), t.col("loss")
                color = cmap[j % len(cmap)]
                div = bool(len(row) and row.first("diverged"))
                if div:
                    k = int(row.first("diverged_at"))
                    keep = (st < k) & np.isfinite(loss)
                    ax.plot(list(st[keep]) + [k], list(loss[keep]) + [top], color=color, lw=1.2, ls="--",
                            label=f"ρ={rho:g}: diverged at t={k}")  # fmt: skip
                    ax.plot([k], [top], "x", color=color, ms=10, mew=2, clip_on=False)
                else:
                    ax.plot(st, loss, color=color, lw=1.2, label=f"ρ={rho:g}")
            ax.set_yscale("log")
            ax.set_ylim(lo, top)
            ax.set_xlabel("iteration t")
            ax.set_ylabel(r"training loss $f(U_t)$")
            ax.set_title(f"{method_label(m)}, η = {config['eta']}")
            ax.legend(fontsize=7, loc="lower left")
        f = save_figure(fig, fig_dir / "loss_curves.png")
        return [
            Figure(
                f,
                "Matrix sensing far from the minimum: loss against iteration",
                f"Same random initialization (α = {config['alpha']}), same η = {config['eta']} (where GD, thick grey, "
                "converges), a grid of ρ; log-scale loss, both panels on the same axis. SAM (left) converges for "
                "every ρ (claim E1.1); USAM (right) converges for small ρ and blows up once ρ is moderate (claim "
                "E1.2): a dashed line ending in × at the top edge marks the step at which its iterate left the "
                "finite range.",
                ["E1.1", "E1.2"],
                ["data/loss_curves.csv", "data/summary.csv"],
            ),  # fmt: skip
        ]
