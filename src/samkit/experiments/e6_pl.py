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
from samkit.experiments import Claim, ConfigError, Experiment, Figure, Param, Table, Unit, fmt, register
from samkit.experiments._common import SEED, tolist
from samkit.experiments.plotting import METHOD_STYLE, method_label, new_figure, save_figure


def _preset(steps: int) -> dict[str, Any]:
    return {
        "seed": 0,
        "m": 1.0,
        "M": 4.0,
        "x_max": 1.0,
        "x0": [0.9, 1.3],
        "eta": 0.05,
        "rhos": [0.01, 0.02, 0.04],
        "steps": steps,
    }


#: Dash of each ρ of the presets (another ρ takes the next of _DASHES), shared by a run and its bound.
_RHO_DASH = {0.01: ":", 0.02: "--", 0.04: "-"}
_DASHES = [":", "--", "-", "-."]


def _dash(rho: float, j: int) -> str:
    return _RHO_DASH.get(rho, _DASHES[j % len(_DASHES)])


@register
class PLExp(Experiment):
    name = "E6"
    title = "Theorem 6: PL losses, USAM's bounded travel vs SAM's drift"
    summary = (
        "Distance travelled along the manifold of minima against t for USAM (bounded, below the theorem's bound) "
        "and SAM (still growing) on L = ½h(y)x², h(y) = m + (M − m)tanh²y."
    )
    presets = {"tiny": _preset(3000), "quick": _preset(30000), "full": _preset(200000)}
    schema = {
        "seed": SEED,
        "m": Param(
            float, "sharpness of the flattest minimum, h(0) = m (the PL constant μ)", min=0, strict=True, below="M"
        ),
        "M": Param(float, "sharpness h(y) far along the minima, as |y| → ∞", min=0, strict=True),
        "x_max": Param(float, "half-width of the strip |x| ≤ x_max on which β is computed", min=0, strict=True),
        "x0": Param(list[float], "start point (x0, y0), with |x0| ≤ x_max", length=2),
        "eta": Param(float, "step size of GD, USAM and SAM", min=0, strict=True),
        "rhos": Param(list[float], "ρ values of USAM and SAM", min=0, strict=True),
        "steps": Param(int, "iterations of each run", min=1),
    }

    def validate(self, config: Mapping[str, Any]) -> None:
        """|x0| ≤ x_max (β, and so Theorem 6's bound, holds on the strip |x| ≤ x_max)."""
        if abs(config["x0"][0]) > config["x_max"]:
            raise ConfigError(f"x0 = (x0, y0) must have |x0| <= x_max (= {config['x_max']}), got {config['x0']}")

    def units(self, config: Mapping[str, Any]) -> list[Unit]:
        p = {k: config[k] for k in ("m", "M", "x_max", "x0", "eta", "rhos", "steps")}
        return [Unit(m, {"method": m, **p}) for m in ("gd", "usam", "sam")]

    def run_unit(self, params: Mapping[str, Any]) -> dict[str, Any]:
        prob = PLManifold(params["m"], params["M"], params["x_max"])
        m = params["method"]
        rhos = [0.0] if m == "gd" else params["rhos"]
        r = simulate(
            prob,
            m,
            eta=params["eta"],
            rho=rhos,
            x0=params["x0"],
            steps=params["steps"],
            record=("x", "path_length", "loss"),
            record_every=max(1, params["steps"] // 1000),
        )
        x0 = torch.tensor(params["x0"], dtype=torch.float64)
        return {
            "rho": rhos,
            "steps": tolist(r.steps),
            "x": tolist(r.series["x"][:, :, 0].T),
            "y": tolist(r.series["x"][:, :, 1].T),
            "path": tolist(r.series["path_length"].T),
            "loss": tolist(r.series["loss"].T),
            "diverged": tolist(r.diverged),
            "beta": prob.beta,
            "mu": prob.mu,
            "loss0": float(prob.loss(x0)),
        }

    def tables(self, config: Mapping[str, Any], results: Mapping[str, Mapping[str, Any]]) -> dict[str, list[dict]]:
        rows, summary = [], []
        y0 = config["x0"][1]
        for m, r in results.items():
            for i, rho in enumerate(r["rho"]):
                ys = r["y"][i]
                for s, x, y, p, loss in zip(r["steps"], r["x"][i], ys, r["path"][i], r["loss"][i]):
                    along = abs(y - y0)
                    rows.append(
                        {
                            "method": m,
                            "rho": rho,
                            "step": s,
                            "x": x,
                            "y": y,
                            "along": along,
                            "path_length": p,
                            "loss": loss,
                        }
                    )
                n = len(r["steps"])
                summary.append(
                    {
                        "method": m,
                        "eta": config["eta"],
                        "rho": rho,
                        "beta": r["beta"],
                        "mu": r["mu"],
                        "loss0": r["loss0"],
                        "diverged": r["diverged"][i],
                        "path_final": r["path"][i][-1],
                        "along_final": abs(ys[-1] - y0),
                        "along_half": abs(ys[n // 2] - y0),
                        "along_3q": abs(ys[(3 * n) // 4] - y0),
                        "y_final": ys[-1],
                    }
                )
        return {"trajectories": rows, "summary": summary}

    # -- claims ---------------------------------------------------------------------------------------------------
    def claims(self, config: Mapping[str, Any], data: Mapping[str, Table]) -> list[Claim]:
        s = data["summary"]
        us = s.where(method="usam")
        setting = (
            f"L=½h(y)x², h=m+(M−m)tanh²y, m={config['m']}, M={config['M']} (μ={fmt(us.first('mu'))}, "
            f"β={fmt(us.first('beta'))} on |x|≤{config['x_max']}), x0={tuple(config['x0'])}, η={config['eta']}, "
            f"ρ∈{config['rhos']}, {config['steps']} steps"
        )
        return [self._usam_claim(config, us, setting), self._sam_claim(config, s, setting)]

    @staticmethod
    def _usam_bound(config: Mapping[str, Any], us: Table) -> np.ndarray:
        """Theorem 6's bound on USAM's path length at each ρ of ``us``."""
        rho = torch.as_tensor(us.col("rho"))
        return theory.usam_pl_distance_bound(
            us.first("beta"), us.first("mu"), config["eta"], rho, us.first("loss0")
        ).numpy()

    def _usam_claim(self, config: Mapping[str, Any], us: Table, setting: str) -> Claim:
        """E6.1: USAM's whole path is shorter than Theorem 6's bound, and it stops moving along the minima."""
        bound = self._usam_bound(config, us)
        path = us.col("path_final")
        growth = us.col("along_final") - us.col("along_half")
        ok = (~us.col("diverged").astype(bool)) & np.isfinite(bound) & (path <= bound) & (growth <= 1e-9)
        return Claim(
            id="E6.1",
            statement="Under PL, USAM travels a bounded distance: its whole path is shorter than the theorem's bound "
            "and it stops moving along the minima.",
            setting=setting,
            prediction="path length ≤ " + ", ".join(fmt(v) for v in bound) + " (usam_pl_distance_bound); "
            "no movement along the minima late in the run",
            measured="path length " + ", ".join(fmt(v) for v in path) + "; movement along the minima over the "
            f"second half {fmt(float(np.abs(growth).max()))}",
            tolerance="path ≤ bound at every ρ; second-half movement ≤ 1e-9",
            passed=bool(ok.all()),
            figure="pl_distance.png",
            data=["data/summary.csv", "data/trajectories.csv"],
        )

    def _sam_claim(self, config: Mapping[str, Any], s: Table, setting: str) -> Claim:
        """E6.2: SAM travels further than USAM along the minima and is still moving, or has reached y = 0."""
        us, sm = s.where(method="usam"), s.where(method="sam")
        along_s, along_u = sm.col("along_final"), us.col("along_final")
        late = sm.col("along_final") - sm.col("along_3q")
        # Either still drifting at the end, or already arrived at the flattest point y = 0 (a long run gets there:
        # then there is nothing left to travel, which is the theorem's point, not a failure).
        y0 = abs(float(config["x0"][1]))
        arrived = np.abs(sm.col("y_final")) <= 0.01 * y0
        drifting = (late > 1e-6) & (sm.col("y_final") >= 0)
        ok = (~sm.col("diverged").astype(bool)) & (along_s > along_u) & (drifting | arrived)
        return Claim(
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
            passed=bool(ok.all()),
            figure="pl_distance.png",
            data=["data/summary.csv", "data/trajectories.csv"],
        )

    # -- figures --------------------------------------------------------------------------------------------------
    def figures(self, config: Mapping[str, Any], data: Mapping[str, Table], fig_dir: Path) -> list[Figure]:
        return [self._distance_figure(config, data["trajectories"], data["summary"], fig_dir)]

    def _distance_figure(self, config: Mapping[str, Any], tr: Table, s: Table, fig_dir: Path) -> Figure:
        fig, axes = new_figure(2, 1, width=5.2, height=4.0)
        panels = (
            (axes[0, 0], "along", r"distance along the minima $|y_t - y_0|$"),
            (axes[0, 1], "path_length", r"path length up to t, $\sum_k \|x_{k+1} - x_k\|$"),
        )
        gd = tr.where(method="gd")
        for ax, col, ylabel in panels:
            for m in ("usam", "sam"):
                for j, rho in enumerate(config["rhos"]):
                    t = tr.where(method=m, rho=float(rho))
                    style = {"color": METHOD_STYLE[m]["color"], "ls": _dash(rho, j)}
                    ax.plot(t.col("step"), t.col(col), label=f"{method_label(m)} ρ={rho:g}", **style)
            ax.plot(gd.col("step"), gd.col(col), color=METHOD_STYLE["gd"]["color"], lw=2, alpha=0.5, label="GD")
            ax.set_xlabel("iteration t")
            ax.set_ylabel(ylabel)
        us = s.where(method="usam")
        for j, (rho, b) in enumerate(zip(us.col("rho"), self._usam_bound(config, us))):
            label = f"Theorem 6 bound on USAM's path, ρ={rho:g}"
            axes[0, 1].axhline(b, color="#ff9896", ls=_dash(rho, j), lw=1.2, label=label)
        axes[0, 1].set_yscale("log")
        axes[0, 0].set_title("Movement along the line of minima x = 0")
        axes[0, 1].set_title("Total path length, with Theorem 6's bound for USAM")
        axes[0, 0].legend(fontsize=7)
        bounds = [h for h in axes[0, 1].get_lines() if str(h.get_label()).startswith("Theorem")]
        axes[0, 1].set_ylim(0.1, None)
        axes[0, 1].legend(
            handles=bounds, fontsize=7, loc="lower right", title="methods: see left legend", title_fontsize=7
        )
        return Figure(
            save_figure(fig, fig_dir / "pl_distance.png"),
            "PL loss: USAM's travel is bounded, SAM's keeps growing",
            "Left: how far each method has moved along the line of minima (|y_t − y_0|). USAM (red) and GD "
            "(grey, under the red lines) stop within a few hundred steps; SAM (blue) keeps moving towards the "
            "flattest point y = 0, faster for larger ρ. Right: total path length (log scale) with Theorem 6's "
            "bound on USAM's path (light red horizontal lines, one per ρ, same dash as the USAM run): USAM stays "
            "below it; SAM's path grows linearly because it also oscillates across the minima.",
            ["E6.1", "E6.2"],
            ["data/trajectories.csv", "data/summary.csv"],
        )
