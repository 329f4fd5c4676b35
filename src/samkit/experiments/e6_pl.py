"""E6 — Theorem 6: under PL, USAM travels a bounded distance; SAM keeps moving along the minima.

On ``L(x, y) = ½ h(y) x²`` (a PL, smooth, non-convex loss whose minima are the line ``x = 0`` with sharpness
``h(y)``), USAM's total path length is bounded by ``usam_pl_distance_bound`` and it stops where it lands,
while SAM keeps travelling along the line towards the flattest point ``y = 0``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from samkit.dynamics import PLManifold, simulate, theory
from samkit.experiments import Claim, Experiment, Figure, Table, Unit, fmt, register
from samkit.experiments._common import tolist
from samkit.experiments.plotting import METHOD_STYLE, method_label, new_figure, save_figure


def _preset(steps: int) -> dict[str, Any]:
    return {"seed": 0, "m": 1.0, "M": 4.0, "x_max": 1.0, "x0": [0.9, 1.3], "eta": 0.05,
            "rhos": [0.01, 0.02, 0.04], "steps": steps}  # fmt: skip


@register
class PLExp(Experiment):
    name = "E6"
    title = "Theorem 6: PL losses, USAM's bounded travel vs SAM's drift"
    summary = (
        "Distance travelled along the manifold of minima against t for USAM (bounded, below the theorem's bound) "
        "and SAM (still growing) on L = ½h(y)x², h(y) = m + (M − m)tanh²y."
    )
    presets = {"tiny": _preset(3000), "quick": _preset(30000), "full": _preset(200000)}

    def units(self, config: Mapping[str, Any]) -> list[Unit]:
        p = {k: config[k] for k in ("m", "M", "x_max", "x0", "eta", "rhos", "steps")}
        return [Unit(m, {"method": m, **p}) for m in ("gd", "usam", "sam")]

    def run_unit(self, params: Mapping[str, Any]) -> dict[str, Any]:
        prob = PLManifold(params["m"], params["M"], params["x_max"])
        m = params["method"]
        rhos = [0.0] if m == "gd" else params["rhos"]
        r = simulate(prob, m, eta=params["eta"], rho=rhos, x0=params["x0"], steps=params["steps"],
                     record=("x", "path_length", "loss"), record_every=max(1, params["steps"] // 1000))  # fmt: skip
        x0 = torch.tensor(params["x0"], dtype=torch.float64)
        return {"rho": rhos, "steps": tolist(r.steps), "x": tolist(r.series["x"][:, :, 0].T),
                "y": tolist(r.series["x"][:, :, 1].T), "path": tolist(r.series["path_length"].T),
                "loss": tolist(r.series["loss"].T), "diverged": tolist(r.diverged), "beta": prob.beta, "mu": prob.mu,
                "loss0": float(prob.loss(x0))}  # fmt: skip

    def tables(self, config: Mapping[str, Any], results: Mapping[str, Mapping[str, Any]]) -> dict[str, list[dict]]:
        rows, summary = [], []
        y0 = config["x0"][1]
        for m, r in results.items():
            for i, rho in enumerate(r["rho"]):
                for s, x, y, p, loss in zip(r["steps"], r["x"][i], r["y"][i], r["path"][i], r["loss"][i]):
                    rows.append({"method": m, "rho": rho, "step": s, "x": x, "y": y, "along": abs(y - y0),
                                 "path_length": p, "loss": loss})  # fmt: skip
                n = len(r["steps"])
                summary.append({"method": m, "eta": config["eta"], "rho": rho, "beta": r["beta"], "mu": r["mu"],
                                "loss0": r["loss0"], "diverged": r["diverged"][i], "path_final": r["path"][i][-1],
                                "along_final": abs(r["y"][i][-1] - y0), "along_half": abs(r["y"][i][n // 2] - y0),
                                "along_3q": abs(r["y"][i][(3 * n) // 4] - y0), "y_final": r["y"][i][-1]})  # fmt: skip
        return {"trajectories": rows, "summary": summary}

    def claims(self, config: Mapping[str, Any], data: Mapping[str, Table]) -> list[Claim]:
        s = data["summary"]
        us, sm = s.where(method="usam"), s.where(method="sam")
        beta, mu, loss0, eta = us.first("beta"), us.first("mu"), us.first("loss0"), config["eta"]
        bound = theory.usam_pl_distance_bound(beta, mu, eta, torch.as_tensor(us.col("rho")), loss0).numpy()
        path = us.col("path_final")
        growth_us = us.col("along_final") - us.col("along_half")
        ok1 = (~us.col("diverged").astype(bool)) & np.isfinite(bound) & (path <= bound) & (growth_us <= 1e-9)
        setting = (f"L=½h(y)x², h=m+(M−m)tanh²y, m={config['m']}, M={config['M']} (μ={fmt(mu)}, β={fmt(beta)} on "
                   f"|x|≤{config['x_max']}), x0={tuple(config['x0'])}, η={eta}, ρ∈{config['rhos']}, "
                   f"{config['steps']} steps")  # fmt: skip
        c1 = Claim(
            id="E6.1",
            statement="Under PL, USAM travels a bounded distance: its whole path is shorter than the theorem's bound "
            "and it stops moving along the minima.",
            setting=setting,
            prediction="path length ≤ " + ", ".join(fmt(v) for v in bound) + " (usam_pl_distance_bound); "
            "no movement along the minima late in the run",
            measured="path length " + ", ".join(fmt(v) for v in path) + "; movement along the minima over the "
            f"second half {fmt(float(np.abs(growth_us).max()))}",
            tolerance="path ≤ bound at every ρ; second-half movement ≤ 1e-9",
            passed=bool(ok1.all()),
            figure="pl_distance.png",
            data=["data/summary.csv", "data/trajectories.csv"],
        )
        along_s, along_u = sm.col("along_final"), us.col("along_final")
        late = sm.col("along_final") - sm.col("along_3q")
        # Either still drifting at the end, or already arrived at the flattest point y = 0 (a long run gets there:
        # then there is nothing left to travel, which is the theorem's point, not a failure).
        y0 = abs(float(config["x0"][1]))
        arrived = np.abs(sm.col("y_final")) <= 0.01 * y0
        drifting = (late > 1e-6) & (sm.col("y_final") >= 0)
        ok2 = (~sm.col("diverged").astype(bool)) & (along_s > along_u) & (drifting | arrived)
        c2 = Claim(
            id="E6.2",
            statement="SAM keeps drifting along the minima towards the flattest point (y = 0): its distance "
            "travelled along the manifold keeps growing after USAM's has stopped, until it reaches y = 0.",
            setting=setting,
            prediction="beyond USAM's distance, and still growing at the end of the run or arrived at y = 0 "
            "(expected behaviour)",
            measured="distance along the minima SAM "
            + ", ".join(fmt(v) for v in along_s)
            + " vs USAM "
            + ", ".join(fmt(v) for v in along_u)
            + "; SAM's growth over the last quarter "
            + ", ".join(fmt(v) for v in late)
            + "; SAM's final |y| "
            + ", ".join(fmt(abs(v)) for v in sm.col("y_final")),
            tolerance="SAM > USAM, and last-quarter growth > 1e-6 or final |y| ≤ 0.01·|y0|, at every ρ",
            passed=bool(ok2.all()),
            figure="pl_distance.png",
            data=["data/summary.csv", "data/trajectories.csv"],
        )
        return [c1, c2]

    def figures(self, config: Mapping[str, Any], data: Mapping[str, Table], fig_dir: Path) -> list[Figure]:
        tr, s = data["trajectories"], data["summary"]
        fig, axes = new_figure(2, 1, width=5.2, height=4.0)
        ls = {0.01: ":", 0.02: "--", 0.04: "-"}
        styles = [":", "--", "-", "-."]
        for ax, col, ylabel in ((axes[0, 0], "along", r"distance along the minima $|y_t - y_0|$"),
                                (axes[0, 1], "path_length", r"path length up to t, $\sum_k \|x_{k+1} - x_k\|$")):  # fmt: skip
            for m in ("usam", "sam"):
                for j, rho in enumerate(config["rhos"]):
                    t = tr.where(method=m, rho=float(rho))
                    ax.plot(t.col("step"), t.col(col), color=METHOD_STYLE[m]["color"], ls=ls.get(rho, styles[j % 4]),
                            label=f"{method_label(m)} ρ={rho:g}")  # fmt: skip
            t = tr.where(method="gd")
            ax.plot(t.col("step"), t.col(col), color=METHOD_STYLE["gd"]["color"], lw=2, alpha=0.5, label="GD")
            ax.set_xlabel("iteration t")
            ax.set_ylabel(ylabel)
        us = s.where(method="usam")
        bound = theory.usam_pl_distance_bound(us.first("beta"), us.first("mu"), config["eta"],
                                              torch.as_tensor(us.col("rho")), us.first("loss0")).numpy()  # fmt: skip
        for j, (rho, b) in enumerate(zip(us.col("rho"), bound)):
            axes[0, 1].axhline(b, color="#ff9896", ls=ls.get(rho, styles[j % 4]), lw=1.2,
                               label=f"Theorem 6 bound on USAM's path, ρ={rho:g}")  # fmt: skip
        axes[0, 1].set_yscale("log")
        axes[0, 0].set_title("Movement along the line of minima x = 0")
        axes[0, 1].set_title("Total path length, with Theorem 6's bound for USAM")
        axes[0, 0].legend(fontsize=7)
        bounds = [h for h in axes[0, 1].get_lines() if str(h.get_label()).startswith("Theorem")]
        axes[0, 1].set_ylim(0.1, None)
        axes[0, 1].legend(handles=bounds, fontsize=7, loc="lower right", title="methods: see left legend",
                          title_fontsize=7)  # fmt: skip
        f = save_figure(fig, fig_dir / "pl_distance.png")
        return [
            Figure(
                f,
                "PL loss: USAM's travel is bounded, SAM's keeps growing",
                "Left: how far each method has moved along the line of minima (|y_t − y_0|). USAM (red) and GD "
                "(grey, under the red lines) stop within a few hundred steps; SAM (blue) keeps moving towards the flattest point y = 0, faster "
                "for larger ρ. Right: total path length (log scale) with Theorem 6's bound on USAM's path "
                "(light red horizontal lines, one per ρ, same dash as the USAM run): USAM stays below it; SAM's path grows linearly because it also oscillates "
                "across the minima.",
                ["E6.1", "E6.2"],
                ["data/trajectories.csv", "data/summary.csv"],
            ),  # fmt: skip
        ]
