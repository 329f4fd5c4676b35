"""E5 — Theorems 3–5: the single-neuron linear network ``L(x, y) = ℓ(xy)``, ``ℓ = log cosh``.

GD stops at ``y∞² ≈ min(y0² − x0², 2/η)`` (edge of stability when ``2/η < y0² − x0²``), USAM is trapped
below the envelope ``min(y0² − x0², (√(1 + 8ρ/η) − 1)/(2ρ))``, and SAM keeps drifting along the minima to
the flattest one, the origin (``y∞² = o(1)``). On the minima ``(0, y)`` the sharpness is ``y²``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from samkit.dynamics import SingleNeuron, simulate, theory
from samkit.experiments import Claim, ConfigError, Experiment, Figure, Param, Table, Unit, fmt, register
from samkit.experiments._common import SEED, tolist
from samkit.experiments.plotting import METHOD_STYLE, method_label, new_figure, save_figure

#: The methods of the trajectories and of the η sweep, in drawing order (the ρ sweep has no GD).
TRAJECTORY_METHODS = ("gd", "usam", "sam")
#: y_t² below this is drawn at this value on the log axis of y2_vs_t.png (SAM's falls to ~1e-10 and below).
Y2_FLOOR = 1e-12


def _preset(steps: int, etas: list[float], rhos: list[float]) -> dict[str, Any]:
    return {
        "seed": 0,
        "loss": "logcosh",
        "x0": [1.2, 3.1],
        "steps": steps,
        "traj_eta": 0.1,
        "traj_rho": 0.1,
        "etas": etas,
        "eta_sweep_rho": 0.1,
        "rhos": rhos,
        "rho_sweep_eta": 0.25,
        "drift_factor": 0.01,
    }


@register
class SingleNeuronExp(Experiment):
    name = "E5"
    title = "Theorems 3–5: single neuron ℓ(xy), GD/USAM trapped, SAM drifts"
    summary = (
        "Trajectories in the (x, y) plane, y_t² (the sharpness on the minima) against t, and y∞² against η and ρ "
        "with the predicted curves, including the edge-of-stability regime 2/η < y0² − x0²."
    )
    presets = {
        "tiny": _preset(3000, [0.1, 0.3], [0.1, 0.5]),
        "quick": _preset(
            12000, [0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5], [0.05, 0.1, 0.2, 0.3, 0.5, 1.0]
        ),
        "full": _preset(
            40000,
            [0.03, 0.05, 0.075, 0.1, 0.125, 0.15, 0.175, 0.2, 0.225, 0.25, 0.275, 0.3, 0.35, 0.4, 0.45, 0.5],
            [0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0],
        ),
    }
    schema = {
        "seed": SEED,
        "loss": Param(str, "the loss ℓ of L(x, y) = ℓ(xy)", choices=("logcosh", "sqrt")),
        "x0": Param(list[float], "start point (x0, y0), with |y0| > |x0|", length=2),
        "steps": Param(int, "iterations of every run", min=1),
        "traj_eta": Param(float, "step size of the trajectories", min=0, strict=True),
        "traj_rho": Param(float, "ρ of the USAM and SAM trajectories", min=0, strict=True),
        "etas": Param(list[float], "step sizes of the η sweep", min=0, strict=True),
        "eta_sweep_rho": Param(float, "ρ of the η sweep", min=0, strict=True),
        "rhos": Param(list[float], "ρ values of the ρ sweep", min=0, strict=True),
        "rho_sweep_eta": Param(float, "step size of the ρ sweep", min=0, strict=True),
        "drift_factor": Param(float, "E5.3's slack: SAM's y_T² may exceed its o(1) limit by this × (y0² − x0²)", min=0),
    }

    def validate(self, config: Mapping[str, Any]) -> None:
        """|y0| > |x0| (Theorems 3–5 start above the diagonal, so that y0² − x0² > 0)."""
        x0, y0 = config["x0"]
        if not abs(y0) > abs(x0):
            raise ConfigError(f"x0 = (x0, y0) must have |y0| > |x0| (Theorems 3–5), got {config['x0']}")

    def units(self, config: Mapping[str, Any]) -> list[Unit]:
        base = {"loss": config["loss"], "x0": config["x0"], "steps": config["steps"]}
        traj = {"kind": "traj", "eta": config["traj_eta"], "rho": config["traj_rho"], **base}
        eta_sweep = {"kind": "sweep", "eta": config["etas"], "rho": config["eta_sweep_rho"], **base}
        rho_sweep = {"kind": "sweep", "eta": config["rho_sweep_eta"], "rho": config["rhos"], **base}
        units = [Unit(f"traj-{m}", {**traj, "method": m}) for m in TRAJECTORY_METHODS]
        units += [Unit(f"eta-sweep-{m}", {**eta_sweep, "method": m}) for m in TRAJECTORY_METHODS]
        units += [Unit(f"rho-sweep-{m}", {**rho_sweep, "method": m}) for m in ("usam", "sam")]
        return units

    def run_unit(self, params: Mapping[str, Any]) -> dict[str, Any]:
        m = params["method"]
        r = simulate(
            SingleNeuron(params["loss"]),
            m,
            eta=params["eta"],
            rho=0.0 if m == "gd" else params["rho"],
            x0=params["x0"],
            steps=params["steps"],
            record=("x",),
            record_every=max(1, params["steps"] // (2000 if params["kind"] == "traj" else 200)),
        )
        x = r.series["x"]
        return {
            "eta": tolist(r.eta),
            "rho": tolist(r.rho),
            "steps": tolist(r.steps),
            "x": tolist(x[:, :, 0].T),
            "y": tolist(x[:, :, 1].T),
            "diverged": tolist(r.diverged),
        }

    def tables(self, config: Mapping[str, Any], results: Mapping[str, Mapping[str, Any]]) -> dict[str, list[dict]]:
        traj, final = [], []
        for key, r in results.items():
            kind = "trajectory" if key.startswith("traj") else ("eta_sweep" if key.startswith("eta") else "rho_sweep")
            m = key.rsplit("-", 1)[1]
            steps = r["steps"]
            half = len(steps) // 2
            for i in range(len(r["eta"])):
                run = {"sweep": kind, "method": m, "eta": r["eta"][i], "rho": r["rho"][i]}
                ys = np.asarray(r["y"][i])
                final.append(
                    {
                        **run,
                        "diverged": r["diverged"][i],
                        "x_final": r["x"][i][-1],
                        "y2_final": ys[-1] ** 2,
                        "y2_half": ys[half] ** 2,
                        "step_half": steps[half],
                        "step_final": steps[-1],
                    }
                )
                if kind != "rho_sweep":
                    for s, x, y in zip(steps, r["x"][i], r["y"][i]):
                        traj.append({**run, "step": s, "x": x, "y": y, "y2": y * y})
        return {"final": final, "trajectories": traj}

    # -- claims ---------------------------------------------------------------------------------------------------
    def claims(self, config: Mapping[str, Any], data: Mapping[str, Table]) -> list[Claim]:
        x0, y0 = config["x0"]
        setting = f"ℓ = {config['loss']}, (x0, y0) = ({x0}, {y0}), y0²−x0² = {fmt(y0 * y0 - x0 * x0)}, {config['steps']} steps"
        fin = data["final"]
        return [
            self._gd_claim(config, fin, setting),
            self._usam_claim(config, fin, setting),
            self._sam_claim(config, fin, setting),
        ]

    @staticmethod
    def _both_sweeps(fin: Table, method: str) -> Table:
        """The final rows of ``method`` in the η sweep, then in the ρ sweep."""
        return Table(
            fin.where(method=method, sweep="eta_sweep").rows + fin.where(method=method, sweep="rho_sweep").rows
        )

    def _gd_claim(self, config: Mapping[str, Any], fin: Table, setting: str) -> Claim:
        """E5.1: GD stops at y∞² ≈ min(y0² − x0², 2/η), from below by at most O(η), with some η at the edge of stability."""
        x0, y0 = config["x0"]
        gd = fin.where(sweep="eta_sweep", method="gd")
        eta = gd.col("eta")
        pred = theory.gd_single_neuron_limit(x0, y0, torch.as_tensor(eta)).numpy()
        meas = gd.col("y2_final")
        shortfall = (pred - meas) / pred
        eos = eta[2.0 / eta < y0 * y0 - x0 * x0]
        ok = (~gd.col("diverged").astype(bool)) & (shortfall >= -1e-3) & (shortfall <= eta)
        return Claim(
            id="E5.1",
            statement="GD converges to a minimum (0, y∞) with y∞² ≈ min(y0² − x0², 2/η): at the edge of stability "
            "(2/η < y0² − x0²) its sharpness is capped by 2/η.",
            setting=f"{setting}, η∈{config['etas']} ({len(eos)} in the EoS regime)",
            prediction="y∞² = " + ", ".join(fmt(v) for v in pred) + " (gd_single_neuron_limit)",
            measured="y∞² = " + ", ".join(fmt(v) for v in meas),
            tolerance="0 ≤ (prediction − measured)/prediction ≤ η (the theorem's O(η) correction, from below)",
            passed=bool(ok.all() and len(eos) > 0),
            figure="y2_vs_eta_rho.png",
            data=["data/final.csv"],
            values={"eta": eta.tolist(), "predicted": pred.tolist(), "measured": meas.tolist()},
        )

    def _usam_claim(self, config: Mapping[str, Any], fin: Table, setting: str) -> Claim:
        """E5.2: USAM is trapped at a minimum below its envelope and does not move afterwards."""
        x0, y0 = config["x0"]
        us = self._both_sweeps(fin, "usam")
        eta, rho = torch.as_tensor(us.col("eta")), torch.as_tensor(us.col("rho"))
        env = theory.usam_single_neuron_limit(x0, y0, eta, rho).numpy()
        y2, y2h = us.col("y2_final"), us.col("y2_half")
        frozen = np.abs(y2 - y2h) / np.maximum(y2, 1e-300)
        ok = (~us.col("diverged").astype(bool)) & (y2 <= env * (1 + 1e-3)) & (frozen <= 1e-6) & (y2 >= 0.1 * env)
        return Claim(
            id="E5.2",
            statement="USAM is trapped like GD: it stops at a minimum (0, y∞) with y∞² below the envelope "
            "min(y0² − x0², (√(1+8ρ/η) − 1)/(2ρ)) and does not move afterwards.",
            setting=f"{setting}; η sweep at ρ={config['eta_sweep_rho']}, ρ sweep at η={config['rho_sweep_eta']}",
            prediction="y∞² ≤ envelope (usam_single_neuron_limit) = "
            + ", ".join(fmt(v) for v in env)
            + "; y_t² constant once trapped",
            measured="y∞² = "
            + ", ".join(fmt(v) for v in y2)
            + f"; max relative change of y² over the second half {fmt(frozen.max())}",
            tolerance="0.1·envelope ≤ y∞² ≤ envelope·(1+1e-3) and relative change ≤ 1e-6 at every (η, ρ)",
            passed=bool(ok.all()),
            figure="y2_vs_eta_rho.png",
            data=["data/final.csv"],
        )

    def _sam_claim(self, config: Mapping[str, Any], fin: Table, setting: str) -> Claim:
        """E5.3: SAM drifts to the origin: y_T² at its o(1) limit up to drift_factor·(y0² − x0²), still falling."""
        x0, y0 = config["x0"]
        slack = config["drift_factor"] * (y0 * y0 - x0 * x0)
        sm = self._both_sweeps(fin, "sam")
        eta, rho = torch.as_tensor(sm.col("eta")), torch.as_tensor(sm.col("rho"))
        pred = theory.sam_single_neuron_limit(x0, y0, eta, rho).numpy()
        y2, y2h = sm.col("y2_final"), sm.col("y2_half")
        ok = (~sm.col("diverged").astype(bool)) & (y2 <= pred + slack) & (y2 <= y2h)
        return Claim(
            id="E5.3",
            statement="SAM keeps drifting along the minima to the flattest one, the origin: y_t² → o(1) for every "
            "η and ρ, whatever GD would do (including the EoS regime).",
            setting=f"{setting}; η sweep at ρ={config['eta_sweep_rho']}, ρ sweep at η={config['rho_sweep_eta']}",
            prediction=f"y∞² = {fmt(float(pred.max()))} (sam_single_neuron_limit), reached up to "
            f"{config['drift_factor']}·(y0² − x0²) = {fmt(slack)} and still non-increasing",
            measured=f"final y² at most {fmt(y2.max())} (median {fmt(float(np.median(y2)))}); "
            f"{int((y2 <= y2h).sum())}/{len(y2)} runs non-increasing over the second half",
            tolerance=f"y_T² ≤ o(1) value + {config['drift_factor']}·(y0² − x0²) and y_T² ≤ y_(T/2)² at every (η, ρ)",
            passed=bool(ok.all()),
            figure="y2_vs_t.png",
            data=["data/final.csv", "data/trajectories.csv"],
            values={"max_final_y2": float(y2.max())},
        )

    # -- figures --------------------------------------------------------------------------------------------------
    def figures(self, config: Mapping[str, Any], data: Mapping[str, Table], fig_dir: Path) -> list[Figure]:
        return [
            self._trajectory_figure(config, data["trajectories"].where(sweep="trajectory"), fig_dir),
            self._final_figure(config, data["final"], fig_dir),
        ]

    def _trajectory_figure(self, config: Mapping[str, Any], tr: Table, fig_dir: Path) -> Figure:
        x0, y0 = config["x0"]
        fig, axes = new_figure(2, 1, width=5.0, height=4.2)
        self._plane_panel(axes[0, 0], config, tr)
        self._y2_panel(axes[0, 1], config, tr)
        return Figure(
            save_figure(fig, fig_dir / "y2_vs_t.png"),
            "Single neuron: GD and USAM stop, SAM slides to the flattest minimum",
            f"Left: trajectories from (x0, y0) = ({x0}, {y0}) with the minima (the axes) in green. All three "
            "methods reach the y-axis; GD and USAM stop there, SAM keeps sliding down it to the origin. "
            "Right: y_t², the sharpness on the minima, against t with the predicted GD limit and USAM envelope "
            "(dotted): GD (dashed, drawn over USAM) and USAM freeze a little apart (inset: the same on a linear "
            f"scale; final values in the legend), while SAM's sharpness keeps falling (values below {Y2_FLOOR:g} drawn at {Y2_FLOOR:g}).",
            ["E5.1", "E5.2", "E5.3"],
            ["data/trajectories.csv"],
        )

    @staticmethod
    def _plane_panel(ax: Any, config: Mapping[str, Any], tr: Table) -> None:
        x0, y0 = config["x0"]
        lim = 1.15 * max(abs(x0), abs(y0))
        ax.axhline(0, color="#2ca02c", lw=3, alpha=0.35, label="global minima (xy = 0)")
        ax.axvline(0, color="#2ca02c", lw=3, alpha=0.35)
        for m in TRAJECTORY_METHODS:
            t = tr.where(method=m)
            color = METHOD_STYLE[m]["color"]
            ax.plot(t.col("x"), t.col("y"), ".-", ms=2, lw=0.6, color=color, label=method_label(m))
            ax.plot(t.col("x")[-1:], t.col("y")[-1:], "o", ms=8, mfc="none", color=color)
        ax.plot([x0], [y0], "k*", ms=10, label="start (x0, y0)")
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-0.3, lim)
        ax.set_xlabel("x (first weight)")
        ax.set_ylabel("y (second weight)")
        ax.set_title(f"Trajectories, η={config['traj_eta']}, ρ={config['traj_rho']} (circles: end)")
        ax.legend(fontsize=7, loc="lower left")

    @staticmethod
    def _y2_panel(ax: Any, config: Mapping[str, Any], tr: Table) -> None:
        x0, y0 = config["x0"]
        eta, rho = config["traj_eta"], config["traj_rho"]
        # GD dashed and on top: it ends close to USAM and would otherwise hide under it
        styles: dict[str, dict[str, Any]] = {
            "gd": {"ls": "--", "lw": 2.0, "zorder": 3},
            "usam": {"lw": 1.5},
            "sam": {"lw": 1.5},
        }
        for m in TRAJECTORY_METHODS:
            t = tr.where(method=m)
            y2 = t.col("y2")
            label = f"{method_label(m)}: y_T² = {fmt(y2[-1])}"
            ax.plot(
                t.col("step"), np.clip(y2, Y2_FLOOR, None), color=METHOD_STYLE[m]["color"], label=label, **styles[m]
            )
        gd_limit = float(theory.gd_single_neuron_limit(x0, y0, eta))
        usam_limit = float(theory.usam_single_neuron_limit(x0, y0, eta, rho))
        ax.axhline(gd_limit, color=METHOD_STYLE["gd"]["color"], ls=":", label="GD limit min(y0²−x0², 2/η) (theory)")
        ax.axhline(usam_limit, color=METHOD_STYLE["usam"]["color"], ls=":", label="USAM envelope (theory)")
        # GD and USAM freeze within a few percent of each other: a linear-scale inset tells them apart
        inset = ax.inset_axes((0.5, 0.52, 0.46, 0.3))
        for m in ("gd", "usam"):
            t = tr.where(method=m)
            inset.plot(t.col("step"), t.col("y2"), color=METHOD_STYLE[m]["color"], **styles[m])
        inset.axhline(gd_limit, color=METHOD_STYLE["gd"]["color"], ls=":")
        inset.axhline(usam_limit, color=METHOD_STYLE["usam"]["color"], ls=":")
        frozen = np.concatenate([tr.where(method=m).col("y2")[1:] for m in ("gd", "usam")] + [[gd_limit, usam_limit]])
        pad = 0.1 * (frozen.max() - frozen.min()) + 1e-3
        inset.set_ylim(frozen.min() - pad, frozen.max() + pad)
        inset.set_title("GD and USAM, linear scale", fontsize=7)
        inset.tick_params(labelsize=6)
        ax.set_yscale("log")
        ax.set_ylim(Y2_FLOOR, 30)
        ax.set_xlabel("iteration t")
        ax.set_ylabel("y_t²  (= sharpness on the minima)")
        ax.set_title(f"Sharpness against time (values < {Y2_FLOOR:g} drawn at {Y2_FLOOR:g})")
        ax.legend(fontsize=7, loc="lower left")

    def _final_figure(self, config: Mapping[str, Any], fin: Table, fig_dir: Path) -> Figure:
        fig, axes = new_figure(2, 1, width=5.0, height=4.0)
        self._eta_panel(axes[0, 0], config, fin.where(sweep="eta_sweep"))
        self._rho_panel(axes[0, 1], config, fin.where(sweep="rho_sweep"))
        return Figure(
            save_figure(fig, fig_dir / "y2_vs_eta_rho.png"),
            "Final sharpness y∞² against η and ρ, with the predicted curves",
            "Left: against η; GD follows min(y0²−x0², 2/η) from below (shaded: the edge-of-stability regime "
            "where 2/η binds), USAM lands under its envelope, SAM ends near 0 for every η. Right: against ρ at "
            f"η = {config['rho_sweep_eta']}: USAM's final sharpness falls with ρ but stays O(1), SAM's is near 0 "
            "for every ρ (exact final values in final.csv).",
            ["E5.1", "E5.2", "E5.3"],
            ["data/final.csv"],
        )

    @staticmethod
    def _eta_panel(ax: Any, config: Mapping[str, Any], sweep: Table) -> None:
        x0, y0 = config["x0"]
        gap0 = y0 * y0 - x0 * x0
        rho = config["eta_sweep_rho"]
        ee = np.linspace(min(config["etas"]) * 0.9, max(config["etas"]) * 1.05, 200)
        ee_t = torch.as_tensor(ee)
        theory_curves = {
            "gd": (theory.gd_single_neuron_limit(x0, y0, ee_t), "GD: min(y0²−x0², 2/η) (theory)"),
            "usam": (theory.usam_single_neuron_limit(x0, y0, ee_t, rho), "USAM envelope (theory)"),
            "sam": (theory.sam_single_neuron_limit(x0, y0, ee_t, rho), "SAM: o(1) (theory)"),
        }
        for m, (curve, label) in theory_curves.items():
            ax.plot(ee, curve.numpy(), color=METHOD_STYLE[m]["color"], ls="--", label=label)
        for m in TRAJECTORY_METHODS:
            t = sweep.where(method=m)
            label = f"{method_label(m)} (measured)"
            ax.plot(t.col("eta"), t.col("y2_final"), "o", color=METHOD_STYLE[m]["color"], label=label)
        ax.axvspan(2 / gap0, ee.max(), color="#ffbb78", alpha=0.3, label="EoS regime 2/η < y0²−x0²")
        ax.set_ylim(-0.3, 1.15 * gap0)
        ax.set_xlabel("step size η")
        ax.set_ylabel(f"final y² after {config['steps']} steps")
        ax.set_title(f"y∞² against η (ρ = {rho})")
        ax.legend(fontsize=6.5, loc="center right")

    @staticmethod
    def _rho_panel(ax: Any, config: Mapping[str, Any], sweep: Table) -> None:
        x0, y0 = config["x0"]
        gap0 = y0 * y0 - x0 * x0
        eta = config["rho_sweep_eta"]
        rr = np.logspace(np.log10(min(config["rhos"]) * 0.8), np.log10(max(config["rhos"]) * 1.2), 200)
        gd_limit = float(theory.gd_single_neuron_limit(x0, y0, eta))
        ax.axhline(gd_limit, color=METHOD_STYLE["gd"]["color"], ls="--", label="GD: min(y0²−x0², 2/η) (theory)")
        envelope = theory.usam_single_neuron_limit(x0, y0, eta, torch.as_tensor(rr)).numpy()
        ax.plot(rr, envelope, color=METHOD_STYLE["usam"]["color"], ls="--", label="USAM envelope (theory)")
        for m in ("usam", "sam"):
            t = sweep.where(method=m)
            label = f"{method_label(m)} (measured)"
            ax.plot(t.col("rho"), t.col("y2_final"), "o", color=METHOD_STYLE[m]["color"], label=label)
        ax.set_xscale("log")
        ax.set_ylim(-0.3, 1.15 * gap0)
        ax.set_xlabel("perturbation radius ρ")
        ax.set_ylabel(f"final y² after {config['steps']} steps")
        ax.set_title(f"y∞² against ρ (η = {eta}: GD at the edge of stability)")
        ax.legend(fontsize=6.5, loc="center right")
