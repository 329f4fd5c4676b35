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
from samkit.experiments import Claim, Experiment, Figure, Table, Unit, fmt, register
from samkit.experiments._common import tolist
from samkit.experiments.plotting import METHOD_STYLE, method_label, new_figure, save_figure

METHODS = ("gd", "usam", "sam")


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

    def units(self, config: Mapping[str, Any]) -> list[Unit]:
        base = {"loss": config["loss"], "x0": config["x0"], "steps": config["steps"]}
        units = [Unit(f"traj-{m}", {"kind": "traj", "method": m, "eta": config["traj_eta"],
                                    "rho": config["traj_rho"], **base}) for m in METHODS]  # fmt: skip
        units += [Unit(f"eta-sweep-{m}", {"kind": "sweep", "method": m, "eta": config["etas"],
                                          "rho": config["eta_sweep_rho"], **base}) for m in METHODS]  # fmt: skip
        units += [Unit(f"rho-sweep-{m}", {"kind": "sweep", "method": m, "eta": config["rho_sweep_eta"],
                                          "rho": config["rhos"], **base}) for m in ("usam", "sam")]  # fmt: skip
        return units

    def run_unit(self, params: Mapping[str, Any]) -> dict[str, Any]:
        prob = SingleNeuron(params["loss"])
        m = params["method"]
        rho = 0.0 if m == "gd" else params["rho"]
        every = max(1, params["steps"] // (2000 if params["kind"] == "traj" else 200))
        r = simulate(prob, m, eta=params["eta"], rho=rho, x0=params["x0"], steps=params["steps"], record=("x",),
                     record_every=every)  # fmt: skip
        x = r.series["x"]
        return {"eta": tolist(r.eta), "rho": tolist(r.rho), "steps": tolist(r.steps), "x": tolist(x[:, :, 0].T),
                "y": tolist(x[:, :, 1].T), "diverged": tolist(r.diverged)}  # fmt: skip

    def tables(self, config: Mapping[str, Any], results: Mapping[str, Mapping[str, Any]]) -> dict[str, list[dict]]:
        traj, final = [], []
        for key, r in results.items():
            kind = "trajectory" if key.startswith("traj") else ("eta_sweep" if key.startswith("eta") else "rho_sweep")
            m = key.rsplit("-", 1)[1]
            steps = r["steps"]
            half = len(steps) // 2
            for i in range(len(r["eta"])):
                ys = np.asarray(r["y"][i])
                final.append({"sweep": kind, "method": m, "eta": r["eta"][i], "rho": r["rho"][i],
                              "diverged": r["diverged"][i], "x_final": r["x"][i][-1], "y2_final": ys[-1] ** 2,
                              "y2_half": ys[half] ** 2, "step_half": steps[half], "step_final": steps[-1]})  # fmt: skip
                if kind != "rho_sweep":
                    for s, x, y in zip(steps, r["x"][i], r["y"][i]):
                        traj.append({"sweep": kind, "method": m, "eta": r["eta"][i], "rho": r["rho"][i], "step": s,
                                     "x": x, "y": y, "y2": y * y})  # fmt: skip
        return {"final": final, "trajectories": traj}

    def claims(self, config: Mapping[str, Any], data: Mapping[str, Table]) -> list[Claim]:
        x0, y0 = config["x0"]
        gap0 = y0 * y0 - x0 * x0
        fin = data["final"]
        setting = f"ℓ = {config['loss']}, (x0, y0) = ({x0}, {y0}), y0²−x0² = {fmt(gap0)}, {config['steps']} steps"
        # GD
        gd = fin.where(sweep="eta_sweep", method="gd")
        eta = gd.col("eta")
        pred = theory.gd_single_neuron_limit(x0, y0, torch.as_tensor(eta)).numpy()
        meas = gd.col("y2_final")
        shortfall = (pred - meas) / pred
        eos = eta[2.0 / eta < gap0]
        ok_gd = (~gd.col("diverged").astype(bool)) & (shortfall >= -1e-3) & (shortfall <= eta)
        c1 = Claim(
            id="E5.1",
            statement="GD converges to a minimum (0, y∞) with y∞² ≈ min(y0² − x0², 2/η): at the edge of stability "
            "(2/η < y0² − x0²) its sharpness is capped by 2/η.",
            setting=f"{setting}, η∈{config['etas']} ({len(eos)} in the EoS regime)",
            prediction="y∞² = " + ", ".join(fmt(v) for v in pred) + " (gd_single_neuron_limit)",
            measured="y∞² = " + ", ".join(fmt(v) for v in meas),
            tolerance="0 ≤ (prediction − measured)/prediction ≤ η (the theorem's O(η) correction, from below)",
            passed=bool(ok_gd.all() and len(eos) > 0),
            figure="y2_vs_eta_rho.png",
            data=["data/final.csv"],
            values={"eta": eta.tolist(), "predicted": pred.tolist(), "measured": meas.tolist()},
        )
        # USAM trapped
        us = Table(fin.where(method="usam", sweep="eta_sweep").rows + fin.where(method="usam", sweep="rho_sweep").rows)
        env = theory.usam_single_neuron_limit(
            x0, y0, torch.as_tensor(us.col("eta")), torch.as_tensor(us.col("rho"))
        ).numpy()
        y2, y2h = us.col("y2_final"), us.col("y2_half")
        frozen = np.abs(y2 - y2h) / np.maximum(y2, 1e-300)
        ok_us = (~us.col("diverged").astype(bool)) & (y2 <= env * (1 + 1e-3)) & (frozen <= 1e-6) & (y2 >= 0.1 * env)
        c2 = Claim(
            id="E5.2",
            statement="USAM is trapped like GD: it stops at a minimum (0, y∞) with y∞² below the envelope "
            "min(y0² − x0², (√(1+8ρ/η) − 1)/(2ρ)) and does not move afterwards.",
            setting=f"{setting}; η sweep at ρ={config['eta_sweep_rho']}, ρ sweep at η={config['rho_sweep_eta']}",
            prediction="y∞² ≤ envelope (usam_single_neuron_limit) = "
            + ", ".join(fmt(v) for v in env)
            + "; y_t² constant once trapped",
            measured="y∞² = " + ", ".join(fmt(v) for v in y2) + f"; max relative change of y² over the second half "
            f"{fmt(frozen.max())}",
            tolerance="0.1·envelope ≤ y∞² ≤ envelope·(1+1e-3) and relative change ≤ 1e-6 at every (η, ρ)",
            passed=bool(ok_us.all()),
            figure="y2_vs_eta_rho.png",
            data=["data/final.csv"],
        )
        # SAM drifts
        sm = Table(fin.where(method="sam", sweep="eta_sweep").rows + fin.where(method="sam", sweep="rho_sweep").rows)
        pred_sam = theory.sam_single_neuron_limit(
            x0, y0, torch.as_tensor(sm.col("eta")), torch.as_tensor(sm.col("rho"))
        ).numpy()
        y2s, y2sh = sm.col("y2_final"), sm.col("y2_half")
        thresh = pred_sam + config["drift_factor"] * gap0
        ok_sam = (~sm.col("diverged").astype(bool)) & (y2s <= thresh) & (y2s <= y2sh)
        c3 = Claim(
            id="E5.3",
            statement="SAM keeps drifting along the minima to the flattest one, the origin: y_t² → o(1) for every "
            "η and ρ, whatever GD would do (including the EoS regime).",
            setting=f"{setting}; η sweep at ρ={config['eta_sweep_rho']}, ρ sweep at η={config['rho_sweep_eta']}",
            prediction=f"y∞² = {fmt(float(pred_sam.max()))} (sam_single_neuron_limit), reached up to "
            f"{config['drift_factor']}·(y0² − x0²) = {fmt(config['drift_factor'] * gap0)} and still non-increasing",
            measured=f"final y² at most {fmt(y2s.max())} (median {fmt(float(np.median(y2s)))}); "
            f"{int((y2s <= y2sh).sum())}/{len(y2s)} runs non-increasing over the second half",
            tolerance=f"y_T² ≤ o(1) value + {config['drift_factor']}·(y0² − x0²) and y_T² ≤ y_(T/2)² at every (η, ρ)",
            passed=bool(ok_sam.all()),
            figure="y2_vs_t.png",
            data=["data/final.csv", "data/trajectories.csv"],
            values={"max_final_y2": float(y2s.max())},
        )
        return [c1, c2, c3]

    def figures(self, config: Mapping[str, Any], data: Mapping[str, Table], fig_dir: Path) -> list[Figure]:
        x0, y0 = config["x0"]
        gap0 = y0 * y0 - x0 * x0
        tr = data["trajectories"].where(sweep="trajectory")
        fig, axes = new_figure(2, 1, width=5.0, height=4.2)
        ax = axes[0, 0]
        lim = 1.15 * max(abs(x0), abs(y0))
        ax.axhline(0, color="#2ca02c", lw=3, alpha=0.35, label="global minima (xy = 0)")
        ax.axvline(0, color="#2ca02c", lw=3, alpha=0.35)
        for m in METHODS:
            t = tr.where(method=m)
            ax.plot(t.col("x"), t.col("y"), ".-", ms=2, lw=0.6, color=METHOD_STYLE[m]["color"], label=method_label(m))
            ax.plot(t.col("x")[-1:], t.col("y")[-1:], "o", ms=8, mfc="none", color=METHOD_STYLE[m]["color"])
        ax.plot([x0], [y0], "k*", ms=10, label="start (x0, y0)")
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-0.3, lim)
        ax.set_xlabel("x (first weight)")
        ax.set_ylabel("y (second weight)")
        ax.set_title(f"Trajectories, η={config['traj_eta']}, ρ={config['traj_rho']} (circles: end)")
        ax.legend(fontsize=7, loc="lower left")
        ax = axes[0, 1]
        for m in METHODS:
            t = tr.where(method=m)
            ax.plot(
                t.col("step"), np.clip(t.col("y2"), 1e-12, None), color=METHOD_STYLE[m]["color"], label=method_label(m)
            )
        ax.axhline(float(theory.gd_single_neuron_limit(x0, y0, config["traj_eta"])), color=METHOD_STYLE["gd"]["color"],
                   ls=":", label="GD limit min(y0²−x0², 2/η) (theory)")  # fmt: skip
        ax.axhline(float(theory.usam_single_neuron_limit(x0, y0, config["traj_eta"], config["traj_rho"])),
                   color=METHOD_STYLE["usam"]["color"], ls=":", label="USAM envelope (theory)")  # fmt: skip
        ax.set_yscale("log")
        ax.set_ylim(1e-12, 30)
        ax.set_xlabel("iteration t")
        ax.set_ylabel("y_t²  (= sharpness on the minima)")
        ax.set_title("Sharpness against time (values < 1e-12 drawn at 1e-12)")
        ax.legend(fontsize=7, loc="lower left")
        f1 = save_figure(fig, fig_dir / "y2_vs_t.png")

        fin = data["final"]
        fig, axes = new_figure(2, 1, width=5.0, height=4.0)
        ax = axes[0, 0]
        ee = np.linspace(min(config["etas"]) * 0.9, max(config["etas"]) * 1.05, 200)
        ax.plot(ee, theory.gd_single_neuron_limit(x0, y0, torch.as_tensor(ee)).numpy(), color=METHOD_STYLE["gd"]["color"],
                ls="--", label="GD: min(y0²−x0², 2/η) (theory)")  # fmt: skip
        ax.plot(ee, theory.usam_single_neuron_limit(x0, y0, torch.as_tensor(ee), config["eta_sweep_rho"]).numpy(),
                color=METHOD_STYLE["usam"]["color"], ls="--", label="USAM envelope (theory)")  # fmt: skip
        ax.plot(ee, theory.sam_single_neuron_limit(x0, y0, torch.as_tensor(ee), config["eta_sweep_rho"]).numpy(),
                color=METHOD_STYLE["sam"]["color"], ls="--", label="SAM: o(1) (theory)")  # fmt: skip
        for m in METHODS:
            t = fin.where(sweep="eta_sweep", method=m)
            ax.plot(t.col("eta"), t.col("y2_final"), "o", color=METHOD_STYLE[m]["color"],
                    label=f"{method_label(m)} (measured)")  # fmt: skip
        ax.axvspan(2 / gap0, ee.max(), color="#ffbb78", alpha=0.3, label="EoS regime 2/η < y0²−x0²")
        ax.set_ylim(-0.3, 1.15 * gap0)
        ax.set_xlabel("step size η")
        ax.set_ylabel(f"final y² after {config['steps']} steps")
        ax.set_title(f"y∞² against η (ρ = {config['eta_sweep_rho']})")
        ax.legend(fontsize=6.5, loc="center right")
        ax = axes[0, 1]
        rr = np.logspace(np.log10(min(config["rhos"]) * 0.8), np.log10(max(config["rhos"]) * 1.2), 200)
        eta_r = config["rho_sweep_eta"]
        ax.axhline(float(theory.gd_single_neuron_limit(x0, y0, eta_r)), color=METHOD_STYLE["gd"]["color"], ls="--",
                   label="GD: min(y0²−x0², 2/η) (theory)")  # fmt: skip
        ax.plot(rr, theory.usam_single_neuron_limit(x0, y0, eta_r, torch.as_tensor(rr)).numpy(),
                color=METHOD_STYLE["usam"]["color"], ls="--", label="USAM envelope (theory)")  # fmt: skip
        for m in ("usam", "sam"):
            t = fin.where(sweep="rho_sweep", method=m)
            ax.plot(t.col("rho"), t.col("y2_final"), "o", color=METHOD_STYLE[m]["color"],
                    label=f"{method_label(m)} (measured)")  # fmt: skip
        ax.set_xscale("log")
        ax.set_ylim(-0.3, 1.15 * gap0)
        ax.set_xlabel("perturbation radius ρ")
        ax.set_ylabel(f"final y² after {config['steps']} steps")
        ax.set_title(f"y∞² against ρ (η = {eta_r}: GD at the edge of stability)")
        ax.legend(fontsize=6.5, loc="center right")
        f2 = save_figure(fig, fig_dir / "y2_vs_eta_rho.png")
        return [
            Figure(
                f1,
                "Single neuron: GD and USAM stop, SAM slides to the flattest minimum",
                f"Left: trajectories from (x0, y0) = ({x0}, {y0}) with the minima (the axes) in green. All three "
                "methods reach the y-axis; GD and USAM stop there, SAM keeps sliding down it to the origin. "
                "Right: y_t², the sharpness on the minima, against t with the predicted GD limit and USAM envelope "
                "(dotted): GD and USAM freeze, SAM's sharpness keeps falling.",
                ["E5.1", "E5.2", "E5.3"],
                ["data/trajectories.csv"],
            ),  # fmt: skip
            Figure(
                f2,
                "Final sharpness y∞² against η and ρ, with the predicted curves",
                "Left: against η; GD follows min(y0²−x0², 2/η) from below (shaded: the edge-of-stability regime "
                "where 2/η binds), USAM lands under its envelope, SAM ends near 0 for every η. Right: against ρ at "
                f"η = {config['rho_sweep_eta']}: USAM's final sharpness falls with ρ but stays O(1), SAM's is near 0 "
                "for every ρ (exact final values in final.csv).",
                ["E5.1", "E5.2", "E5.3"],
                ["data/final.csv"],
            ),  # fmt: skip
        ]
