"""E3 — Theorem 1: normalization stabilizes. GD/SAM/USAM phase diagrams on a quadratic, SAM's 2-cycle,
and the non-quadratic strongly convex case.

On ``L = ½xᵀAx`` with top eigenvalue β, GD and SAM (for every ρ) are stable iff ``η < 2/β`` while USAM is
stable iff ``η < 2/(β + ρβ²)`` — a threshold that shrinks as ρ grows. SAM settles in a 2-cycle of
amplitude ``ηρβ/(2 − ηβ)``. On a strongly convex, β-smooth, non-quadratic loss SAM with ``η ≤ 1/β`` ends
within the loss neighbourhood ``ηβ³ρ²/(2μ)`` for every ρ, while USAM started far away diverges once
``η > 2/(β + ρβ²)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from samkit.dynamics import Quadratic, SmoothStronglyConvex, simulate, theory
from samkit.experiments import Claim, Experiment, Figure, Table, Unit, fmt, register
from samkit.experiments._common import linspace, logspace, theory_float, tolist
from samkit.experiments.plotting import METHOD_STYLE, method_label, new_figure, save_figure

METHODS = ("gd", "sam", "usam")


def _preset(n_eta: int, n_rho: int, steps: int, sc_steps: int) -> dict[str, Any]:
    return {
        "seed": 0,
        "eigenvalues": [10.0, 1.0],
        "x0": [1.0, 1.0],
        "eta_min": 0.004,
        "eta_max": 0.3,
        "n_eta": n_eta,
        "rho_min": 0.001,
        "rho_max": 10.0,
        "n_rho": n_rho,
        "steps": steps,
        "blowup": 1e12,
        "band": 0.02,
        "curve_rho": 0.1,
        "curve_etas": [0.095, 0.105, 0.19, 0.21],
        "cycle_etas": [0.05, 0.1, 0.15, 0.19],
        "cycle_rhos": [0.01, 0.1, 1.0],
        "sc_a": [10.0, 1.0],
        "sc_c": 0.5,
        "sc_x0": [5.0, 5.0],
        "sc_rhos": [0.01, 0.03, 0.3, 1.0, 3.0],
        "sc_steps": sc_steps,
    }


@register
class Theorem1(Experiment):
    name = "E3"
    title = "Theorem 1: stability thresholds on quadratics and strongly convex losses"
    summary = (
        "GD, SAM and USAM over an (η, ρ) grid on L = ½xᵀdiag(10, 1)x from x0 = (1, 1); SAM's 2-cycle; "
        "SAM and USAM on a non-quadratic strongly convex loss."
    )
    presets = {
        "tiny": _preset(12, 8, 400, 400),
        "quick": _preset(60, 41, 2000, 3000),
        "full": _preset(150, 101, 5000, 10000),
    }

    def units(self, config: Mapping[str, Any]) -> list[Unit]:
        base = {k: config[k] for k in ("eigenvalues", "x0", "steps", "blowup")}
        etas = linspace(config["eta_min"], config["eta_max"], config["n_eta"])
        rhos = logspace(config["rho_min"], config["rho_max"], config["n_rho"])
        units = [
            Unit(f"phase-{m}", {"kind": "phase", "method": m, "etas": etas, "rhos": rhos, **base}) for m in METHODS
        ]
        units.append(
            Unit(
                "curves",
                {"kind": "curves", "etas": config["curve_etas"], "rho": config["curve_rho"], **base},
            )
        )
        units.append(
            Unit("cycle", {"kind": "cycle", "etas": config["cycle_etas"], "rhos": config["cycle_rhos"], **base})
        )
        units.append(
            Unit(
                "strongly-convex",
                {
                    "kind": "sc",
                    "a": config["sc_a"],
                    "c": config["sc_c"],
                    "x0": config["sc_x0"],
                    "rhos": config["sc_rhos"],
                    "steps": config["sc_steps"],
                    "blowup": config["blowup"],
                },
            )
        )
        return units

    def run_unit(self, params: Mapping[str, Any]) -> dict[str, Any]:
        kind = params["kind"]
        if kind == "sc":
            prob = SmoothStronglyConvex(params["a"], c=params["c"])
            eta = 1.0 / prob.beta
            out: dict[str, Any] = {"beta": prob.beta, "mu": prob.mu, "eta": eta}
            x0 = torch.tensor(params["x0"], dtype=torch.float64)
            out["loss0"] = float(prob.loss(x0))
            every = max(1, params["steps"] // 200)
            for m in ("sam", "usam"):
                r = simulate(prob, m, eta=eta, rho=params["rhos"], x0=x0, steps=params["steps"],
                             record=("loss",), record_every=every, blowup=params["blowup"])  # fmt: skip
                out[m] = {
                    "rho": tolist(r.rho),
                    "diverged": tolist(r.diverged),
                    "diverged_at": tolist(r.diverged_at),
                    "final_loss": tolist(r.final_loss),
                    "tail_max_loss": tolist(r.series["loss"][len(r.steps) // 2 :].amax(0)),
                    "steps": tolist(r.steps),
                    "loss": tolist(r.series["loss"].T),
                }
            return out
        prob = Quadratic(params["eigenvalues"])
        x0 = torch.tensor(params["x0"], dtype=torch.float64)
        if kind == "phase":
            eta = torch.tensor(params["etas"], dtype=torch.float64)
            rho = torch.tensor(params["rhos"], dtype=torch.float64)
            E, R = torch.meshgrid(eta, rho, indexing="ij")
            if params["method"] == "gd":
                R = torch.zeros_like(R)
            r = simulate(prob, params["method"], eta=E.reshape(-1), rho=R.reshape(-1), x0=x0, steps=params["steps"],
                         record=(), blowup=params["blowup"])  # fmt: skip
            return {
                "eta": tolist(E.reshape(-1)),
                "rho": tolist(torch.meshgrid(eta, rho, indexing="ij")[1].reshape(-1)),
                "diverged": tolist(r.diverged),
                "diverged_at": tolist(r.diverged_at),
                "final_norm": tolist(r.final.norm(dim=1)),
            }
        if kind == "curves":
            out = {"beta": prob.beta}
            for m in METHODS:
                r = simulate(prob, m, eta=params["etas"], rho=0.0 if m == "gd" else params["rho"], x0=x0,
                             steps=params["steps"], record=("loss",), record_every=max(1, params["steps"] // 400),
                             blowup=params["blowup"])  # fmt: skip
                out[m] = {"steps": tolist(r.steps), "loss": tolist(r.series["loss"].T), "diverged": tolist(r.diverged)}
            return out
        if kind == "cycle":
            eta = torch.tensor(params["etas"], dtype=torch.float64)
            rho = torch.tensor(params["rhos"], dtype=torch.float64)
            E, R = torch.meshgrid(eta, rho, indexing="ij")
            r = simulate(prob, "sam", eta=E.reshape(-1), rho=R.reshape(-1), x0=x0, steps=params["steps"], record=("x",),
                         record_every=max(1, params["steps"] - 1))  # fmt: skip
            last, prev = r.series["x"][-1], r.series["x"][-2]
            return {
                "beta": prob.beta,
                "eta": tolist(E.reshape(-1)),
                "rho": tolist(R.reshape(-1)),
                "amp_last": tolist(last.norm(dim=1)),
                "amp_prev": tolist(prev.norm(dim=1)),
                "x1_last": tolist(last[:, 0]),
                "x2_last": tolist(last[:, 1]),
            }
        raise ValueError(f"unknown unit kind {kind!r}")

    def tables(self, config: Mapping[str, Any], results: Mapping[str, Mapping[str, Any]]) -> dict[str, list[dict]]:
        phase = []
        for m in METHODS:
            r = results[f"phase-{m}"]
            for i in range(len(r["eta"])):
                phase.append(
                    {
                        "method": m,
                        "eta": r["eta"][i],
                        "rho": r["rho"][i],
                        "diverged": r["diverged"][i],
                        "diverged_at": r["diverged_at"][i],
                        "final_norm": r["final_norm"][i],
                    }
                )
        curves = []
        c = results["curves"]
        for m in METHODS:
            for j, eta in enumerate(config["curve_etas"]):
                for s, loss in zip(c[m]["steps"], c[m]["loss"][j]):
                    curves.append({"method": m, "eta": eta, "rho": 0.0 if m == "gd" else config["curve_rho"],
                                   "step": s, "loss": loss})  # fmt: skip
        cy = results["cycle"]
        cycle = [
            {"eta": e, "rho": rh, "amplitude": a, "amplitude_prev": ap, "x1": x1, "x2": x2}
            for e, rh, a, ap, x1, x2 in zip(
                cy["eta"], cy["rho"], cy["amp_last"], cy["amp_prev"], cy["x1_last"], cy["x2_last"]
            )
        ]
        sc = results["strongly-convex"]
        sc_rows, sc_curves = [], []
        for m in ("sam", "usam"):
            d = sc[m]
            for i, rho in enumerate(d["rho"]):
                sc_rows.append(
                    {
                        "method": m,
                        "eta": sc["eta"],
                        "rho": rho,
                        "beta": sc["beta"],
                        "mu": sc["mu"],
                        "loss0": sc["loss0"],
                        "diverged": d["diverged"][i],
                        "diverged_at": d["diverged_at"][i],
                        "final_loss": d["final_loss"][i],
                        "tail_max_loss": d["tail_max_loss"][i],
                    }
                )
                for s, loss in zip(d["steps"], d["loss"][i]):
                    sc_curves.append({"method": m, "rho": rho, "step": s, "loss": loss})
        return {"phase": phase, "loss_curves": curves, "sam_cycle": cycle, "strongly_convex": sc_rows,
                "strongly_convex_curves": sc_curves}  # fmt: skip

    # -- claims ------------------------------------------------------------------------------------------------
    def _predicted_stable(self, method: str, eta: np.ndarray, rho: np.ndarray, beta: float) -> np.ndarray:
        if method == "usam":
            thr = theory.usam_threshold(beta, torch.as_tensor(rho)).numpy()
        elif method == "sam":
            thr = theory.sam_threshold(beta, torch.as_tensor(rho)).numpy()
        else:
            thr = np.full_like(eta, theory_float(theory.gd_threshold(beta)))
        return eta < thr, thr

    def claims(self, config: Mapping[str, Any], data: Mapping[str, Table]) -> list[Claim]:
        beta = max(config["eigenvalues"])
        phase = data["phase"]
        out = []
        statements = {
            "gd": ("GD on a quadratic is stable iff η < 2/β.", "stable iff η < 2/β = {thr}"),
            "usam": (
                "USAM on a quadratic is stable iff η < 2/(β + ρβ²): its admissible step shrinks as ρ grows.",
                "stable iff η < 2/(β+ρβ²) (from {thr_lo} at ρ={rho_hi} to {thr_hi} at ρ={rho_lo})",
            ),
            "sam": (
                "SAM on a quadratic is stable iff η < 2/β for every ρ: its threshold does not depend on ρ.",
                "stable iff η < 2/β = {thr} for every ρ",
            ),
        }
        for i, m in enumerate(("gd", "usam", "sam"), start=1):
            t = phase.where(method=m)
            eta, rho, div = t.col("eta"), t.col("rho"), t.col("diverged").astype(bool)
            pred_stable, thr = self._predicted_stable(m, eta, rho, beta)
            outside = np.abs(eta / thr - 1.0) > config["band"]
            agree = (pred_stable == ~div) & outside
            n_out = int(outside.sum())
            frac = agree.sum() / max(n_out, 1)
            st, pr = statements[m]
            pr = pr.format(
                thr=fmt(theory_float(theory.gd_threshold(beta))),
                thr_lo=fmt(theory_float(theory.usam_threshold(beta, config["rho_max"]))),
                thr_hi=fmt(theory_float(theory.usam_threshold(beta, config["rho_min"]))),
                rho_lo=fmt(config["rho_min"]),
                rho_hi=fmt(config["rho_max"]),
            )
            out.append(
                Claim(
                    id=f"E3.{i}",
                    statement=st,
                    setting=f"L=½xᵀdiag{tuple(config['eigenvalues'])}x, x0={tuple(config['x0'])}, "
                    f"{config['n_eta']}×{config['n_rho']} grid η∈[{fmt(config['eta_min'])}, {fmt(config['eta_max'])}], "
                    f"ρ∈[{fmt(config['rho_min'])}, {fmt(config['rho_max'])}], {config['steps']} steps, "
                    f"diverged = ‖x‖>{fmt(config['blowup'])}",
                    prediction=pr,
                    measured=f"{int(agree.sum())}/{n_out} grid cells agree with the predicted stable/unstable "
                    f"label ({int((~pred_stable & outside).sum())} predicted unstable; "
                    f"{int(div.sum())} diverged in total)",
                    tolerance=f"all cells agree; cells with |η/threshold − 1| ≤ {config['band']} excluded "
                    f"({int((~outside).sum())} cells)",
                    passed=bool(n_out > 0 and frac == 1.0),
                    figure="phase_diagram.png",
                    data=["data/phase.csv"],
                    values={"agree": int(agree.sum()), "cells": n_out, "fraction": float(frac)},
                )
            )
        cy = data["sam_cycle"]
        pred = theory.sam_cycle_amplitude(torch.as_tensor(cy.col("eta")), torch.as_tensor(cy.col("rho")), beta).numpy()
        meas = cy.col("amplitude")
        err = np.abs(meas - pred) / pred
        cyc_ok = np.abs(cy.col("amplitude_prev") - meas) / pred
        out.append(
            Claim(
                id="E3.4",
                statement="Below 2/β SAM does not converge to the minimizer but to a 2-cycle ±a·e₁ along the top "
                "eigenvector with a = ηρβ/(2 − ηβ).",
                setting=f"η∈{config['cycle_etas']}, ρ∈{config['cycle_rhos']}, {config['steps']} steps",
                prediction=f"a from {fmt(pred.min())} to {fmt(pred.max())} (sam_cycle_amplitude)",
                measured=f"max relative error {fmt(err.max())}; |x_T|−|x_(T−1)| relative {fmt(cyc_ok.max())}",
                tolerance="relative error ≤ 1e-6 at every (η, ρ)",
                passed=bool(err.max() <= 1e-6 and cyc_ok.max() <= 1e-6),
                figure="loss_curves.png",
                data=["data/sam_cycle.csv"],
                values={"max_rel_err": float(err.max())},
            )
        )
        sc = data["strongly_convex"]
        sam = sc.where(method="sam")
        b, mu, eta = sam.first("beta"), sam.first("mu"), sam.first("eta")
        bound = theory.sam_strongly_convex_neighbourhood(eta, torch.as_tensor(sam.col("rho")), b, mu).numpy()
        tail = sam.col("tail_max_loss")
        sam_ok = (~sam.col("diverged").astype(bool)) & (tail <= bound)
        out.append(
            Claim(
                id="E3.5",
                statement="On a μ-strongly convex β-smooth (non-quadratic) loss SAM with η ≤ 1/β converges to a "
                "loss neighbourhood ηβ³ρ²/(2μ) for every ρ.",
                setting=f"L=Σ a_i(z_i²/2 − c·log cosh z_i), a={config['sc_a']}, c={config['sc_c']} "
                f"(β={fmt(b)}, μ={fmt(mu)}), η=1/β, x0={tuple(config['sc_x0'])}, ρ∈{config['sc_rhos']}, "
                f"{config['sc_steps']} steps",
                prediction="max loss over the second half ≤ "
                + ", ".join(f"{fmt(v)}" for v in bound)
                + " (sam_strongly_convex_neighbourhood)",
                measured="max loss over the second half " + ", ".join(fmt(v) for v in tail),
                tolerance="≤ the bound at every ρ, no divergence",
                passed=bool(sam_ok.all()),
                figure="strongly_convex.png",
                data=["data/strongly_convex.csv", "data/strongly_convex_curves.csv"],
                values={"bound": bound.tolist(), "measured": tail.tolist()},
            )
        )
        us = sc.where(method="usam")
        thr = theory.usam_threshold(b, torch.as_tensor(us.col("rho"))).numpy()
        pred_div = eta > thr
        meas_div = us.col("diverged").astype(bool)
        out.append(
            Claim(
                id="E3.6",
                statement="On the same loss, started far from the minimizer (curvature ≈ β), USAM with η = 1/β "
                "diverges exactly when η > 2/(β + ρβ²).",
                setting=f"same loss, η=1/β={fmt(eta)}, x0={tuple(config['sc_x0'])}, ρ∈{config['sc_rhos']}",
                prediction="diverges at ρ = "
                + ", ".join(fmt(r) for r, p in zip(us.col("rho"), pred_div) if p)
                + "; converges at ρ = "
                + ", ".join(fmt(r) for r, p in zip(us.col("rho"), pred_div) if not p),
                measured="diverged at ρ = "
                + (", ".join(fmt(r) for r, d in zip(us.col("rho"), meas_div) if d) or "none")
                + "; converged at ρ = "
                + (", ".join(fmt(r) for r, d in zip(us.col("rho"), meas_div) if not d) or "none"),
                tolerance="the same label at every ρ",
                passed=bool((pred_div == meas_div).all() and pred_div.any() and (~pred_div).any()),
                figure="strongly_convex.png",
                data=["data/strongly_convex.csv"],
            )
        )
        return out

    # -- figures -----------------------------------------------------------------------------------------------
    def figures(self, config: Mapping[str, Any], data: Mapping[str, Table], fig_dir: Path) -> list[Figure]:
        beta = max(config["eigenvalues"])
        phase = data["phase"]
        fig, axes = new_figure(3, 1, width=4.6, height=4.0)
        rho_line = np.logspace(np.log10(config["rho_min"]), np.log10(config["rho_max"]), 200)
        for ax, m in zip(axes[0], ("gd", "sam", "usam")):
            t = phase.where(method=m)
            eta, rho, div = t.col("eta"), t.col("rho"), t.col("diverged").astype(bool)
            ax.scatter(eta[~div], rho[~div], s=6, c="#9ecae1", marker="s", label="stable (measured)")
            ax.scatter(eta[div], rho[div], s=6, c="#fc9272", marker="s", label="diverged (measured)")
            ax.plot(np.full_like(rho_line, theory_float(theory.gd_threshold(beta))), rho_line, "k-", lw=1.5,
                    label="η = 2/β (GD, SAM theory)")  # fmt: skip
            ax.plot(theory.usam_threshold(beta, torch.as_tensor(rho_line)).numpy(), rho_line, "k--", lw=1.5,
                    label="η = 2/(β+ρβ²) (USAM theory)")  # fmt: skip
            ax.set_yscale("log")
            ax.set_xlim(0, config["eta_max"])
            ax.set_xlabel("step size η")
            ax.set_ylabel("perturbation radius ρ" + (" (unused by GD)" if m == "gd" else ""))
            ax.set_title(method_label(m))
        axes[0, 2].legend(loc="upper right", fontsize=7, framealpha=0.9)
        f1 = save_figure(fig, fig_dir / "phase_diagram.png")

        lc = data["loss_curves"]
        fig, axes = new_figure(3, 1, width=4.6, height=3.8)
        colors = ["#2ca02c", "#1f77b4", "#ff7f0e", "#d62728"]
        for ax, m in zip(axes[0], ("gd", "sam", "usam")):
            for col, eta in zip(colors, config["curve_etas"]):
                t = lc.where(method=m, eta=float(eta))
                loss = np.clip(t.col("loss"), 1e-300, None)
                thr = theory_float(
                    theory.usam_threshold(beta, config["curve_rho"]) if m == "usam" else theory.gd_threshold(beta)
                )
                side = "<" if eta < thr else ">"
                ax.plot(t.col("step"), loss, color=col, lw=1.2, label=f"η={eta:g} ({side} {thr:.3g})")
            if m == "sam":
                for col, eta in zip(colors, config["curve_etas"]):
                    cl = theory_float(theory.sam_cycle_loss(eta, config["curve_rho"], beta))
                    if np.isfinite(cl):
                        ax.axhline(cl, color=col, ls=":", lw=1)
                ax.plot([], [], "k:", lw=1, label="2-cycle loss ½βa² (theory)")
            ax.set_yscale("log")
            ax.set_ylim(1e-30, 1e14)
            ax.set_xlim(0, min(config["steps"], 600))
            ax.set_xlabel("iteration t")
            ax.set_ylabel("loss L(x_t)")
            rho_txt = "" if m == "gd" else f", ρ={config['curve_rho']:g}"
            ax.set_title(f"{method_label(m)}{rho_txt}")
            ax.legend(fontsize=7, loc="lower left")
        f2 = save_figure(fig, fig_dir / "loss_curves.png")

        sc = data["strongly_convex_curves"]
        st = data["strongly_convex"]
        fig, axes = new_figure(2, 1, width=5.0, height=3.8)
        b, mu, eta = st.first("beta"), st.first("mu"), st.first("eta")
        cmap = [METHOD_STYLE["sam"]["color"], "#17becf", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]
        for ax, m in zip(axes[0], ("sam", "usam")):
            for col, rho in zip(cmap, config["sc_rhos"]):
                t = sc.where(method=m, rho=float(rho))
                ax.plot(t.col("step"), np.clip(t.col("loss"), 1e-300, None), color=col, lw=1.2, label=f"ρ={rho:g}")
                if m == "sam":
                    ax.axhline(theory_float(theory.sam_strongly_convex_neighbourhood(eta, rho, b, mu)), color=col,
                               ls=":", lw=1)  # fmt: skip
            if m == "sam":
                ax.plot([], [], "k:", label="bound ηβ³ρ²/(2μ) (theory)")
            ax.set_yscale("log")
            ax.set_xlabel("iteration t")
            ax.set_ylabel("loss L(x_t) − L*")
            ax.set_title(f"{method_label(m)}, η = 1/β = {eta:.3g}")
            ax.legend(fontsize=7)
        f3 = save_figure(fig, fig_dir / "strongly_convex.png")
        thr_txt = f"2/β = {2 / beta:.3g}"
        return [
            Figure(
                f1,
                "Phase diagrams: where GD, SAM and USAM diverge",
                f"Each square is one run of {config['steps']} steps on L = ½xᵀdiag{tuple(config['eigenvalues'])}x "
                "from x0 = (1, 1); red = the iterate left ‖x‖ ≤ 1e12. The solid line is GD's and SAM's "
                f"threshold η = {thr_txt}, the dashed curve USAM's threshold η = 2/(β + ρβ²), both from "
                "samkit.dynamics.theory. SAM's unstable region is the same as GD's for every ρ, while USAM's "
                "grows with ρ.",
                ["E3.1", "E3.2", "E3.3"],
                ["data/phase.csv"],
            ),  # fmt: skip
            Figure(
                f2,
                "Loss curves on either side of each threshold",
                f"Loss against iteration at ρ = {config['curve_rho']:g} for step sizes just below and above "
                f"USAM's threshold 2/(β+ρβ²) and GD's/SAM's threshold {thr_txt}. USAM already blows up above "
                "its smaller threshold; SAM stays bounded until 2/β and plateaus at the loss of its 2-cycle "
                "(dotted lines, theory), where GD converges to 0.",
                ["E3.2", "E3.3", "E3.4"],
                ["data/loss_curves.csv", "data/sam_cycle.csv"],
            ),  # fmt: skip
            Figure(
                f3,
                "Strongly convex, non-quadratic loss",
                "SAM (left) with η = 1/β stays under its neighbourhood bound ηβ³ρ²/(2μ) (dotted, theory) for "
                "every ρ, even ρ = 3; USAM (right) started far from the minimizer diverges (curves stop) once "
                "η > 2/(β + ρβ²), and converges to the exact minimizer otherwise.",
                ["E3.5", "E3.6"],
                ["data/strongly_convex.csv", "data/strongly_convex_curves.csv"],
            ),  # fmt: skip
        ]
