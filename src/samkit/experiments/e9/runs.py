"""E9's work units and their tables: per λ a quadratic phase diagram with the 2-cycle runs, per λ the factorization
boundary by bisection, and per (λ, seed) one full-batch deep-net run (E8's training loop, ``method="unified"``).

This module and what it imports are the code that computes a unit (its source is the units' cache fingerprint);
the analysis, claims and figures live elsewhere.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from samkit.dynamics import Quadratic, ScalarFactorization, factorization_boundary, factorization_start, simulate
from samkit.experiments._common import linspace, logspace, mesh, tolist
from samkit.experiments.base import Unit
from samkit.experiments.e8 import runs as e8_runs

_NET_KEYS = ("dataset", "n_train", "hidden", "eig_every", "eig_tol")


def units(config: Mapping[str, Any]) -> list[Unit]:
    quad = {k: config[k] for k in ("eigenvalues", "x0", "steps", "blowup", "cycle_etas", "cycle_rhos")}
    quad["etas"] = linspace(config["eta_min"], config["eta_max"], config["n_eta"])
    quad["rhos"] = logspace(config["rho_min"], config["rho_max"], config["n_rho"])
    out = [Unit(f"quadratic-lam{lam:g}", {"kind": "quadratic", **quad, "lam": lam}) for lam in config["lams"]]
    keys = ("fact_steps", "bisect_rho_min", "bisect_rho_max", "bisect_tol", "sam_rho_max", "blowup")
    fact = {k: config[k] for k in keys}
    fact["etas"] = logspace(config["fact_eta_min"], config["fact_eta_max"], config["n_fact_eta"])
    out += [
        Unit(f"factorization-lam{lam:g}", {"kind": "factorization", **fact, "lam": lam}) for lam in config["fact_lams"]
    ]
    net = {k: config[k] for k in _NET_KEYS}
    net.update(eta=config["net_eta"], steps=config["net_steps"], blowup=config["net_blowup"])
    for s in config["seeds"]:
        gd = {"kind": "net", **net, "method": "gd", "rho": 0.0, "steps": config["gd_steps"], "seed": s}
        out.append(Unit(f"net-gd-s{s}", gd))
        for lam in config["net_lams"]:
            p = {"kind": "net", **net, "method": "unified", "rho": config["net_rho"], "lam": lam, "seed": s}
            out.append(Unit(f"net-lam{lam:g}-s{s}", p))
    return out


def run_unit(params: Mapping[str, Any]) -> dict[str, Any]:
    kinds = {"quadratic": _run_quadratic, "factorization": _run_factorization, "net": e8_runs.run_unit}
    return kinds[params["kind"]](params)


def _run_quadratic(params: Mapping[str, Any]) -> dict[str, Any]:
    """Unified SAM at one λ over the (η, ρ) grid (diverged or not), then on the 2-cycle grid (its last two iterates)."""
    prob, x0 = Quadratic(params["eigenvalues"]), torch.tensor(params["x0"], dtype=torch.float64)
    eta, rho = mesh(params["etas"], params["rhos"])
    kw = {"x0": x0, "steps": params["steps"], "lam": params["lam"], "blowup": params["blowup"]}
    phase = simulate(prob, "unified", eta=eta, rho=rho, record=(), **kw)
    ceta, crho = mesh(params["cycle_etas"], params["cycle_rhos"])
    cyc = simulate(prob, "unified", eta=ceta, rho=crho, record=("x",), record_every=max(1, params["steps"] - 1), **kw)
    last, prev = cyc.series["x"][-1], cyc.series["x"][-2]
    return {
        "beta": prob.beta,
        "eta": tolist(eta),
        "rho": tolist(rho),
        "diverged": tolist(phase.diverged),
        "diverged_at": tolist(phase.diverged_at),
        "final_norm": tolist(phase.final.norm(dim=1)),
        "cycle_eta": tolist(ceta),
        "cycle_rho": tolist(crho),
        "cycle_diverged": tolist(cyc.diverged),
        "amp_last": tolist(last.norm(dim=1)),
        "amp_prev": tolist(prev.norm(dim=1)),
    }


def _run_factorization(params: Mapping[str, Any]) -> dict[str, Any]:
    """Unified SAM's divergence boundary ρ* on ½(xy)² at one λ, every η from y0 = η^(−1/2), x0 = y0/2."""
    etas = torch.tensor(params["etas"], dtype=torch.float64)
    b = factorization_boundary(
        etas,
        "unified",
        lam=params["lam"],
        lo=params["bisect_rho_min"],
        hi=params["bisect_rho_max"],
        rtol=params["bisect_tol"],
        steps=params["fact_steps"],
        blowup=params["blowup"],
    )
    rho = torch.full_like(etas, params["sam_rho_max"])
    kw = {"steps": params["fact_steps"], "lam": params["lam"], "record": (), "blowup": params["blowup"]}
    at_sam_rho = simulate(ScalarFactorization(), "unified", etas, rho, factorization_start(etas), **kw)
    return {
        "eta": tolist(etas),
        "rho_lo": tolist(b.rho_lo),
        "rho_hi": tolist(b.rho_hi),
        "bracketed": tolist(b.bracketed),
        "diverged_at_max": tolist(b.diverged_at_hi),
        "diverged_at_sam_rho": tolist(at_sam_rho.diverged),
    }


def run_tables(config: Mapping[str, Any], results: Mapping[str, Mapping[str, Any]]) -> dict[str, list[dict]]:
    phase, cycle, fact, runs, curves = [], [], [], [], []
    for lam in config["lams"]:
        r = results[f"quadratic-lam{lam:g}"]
        cols = ("eta", "rho", "diverged", "diverged_at", "final_norm")
        phase += [{"lam": lam, **{c: r[c][i] for c in cols}} for i in range(len(r["eta"]))]
        for i in range(len(r["cycle_eta"])):
            cycle.append(
                {
                    "lam": lam,
                    "eta": r["cycle_eta"][i],
                    "rho": r["cycle_rho"][i],
                    "diverged": r["cycle_diverged"][i],
                    "amplitude": r["amp_last"][i],
                    "amplitude_prev": r["amp_prev"][i],
                }
            )
    for lam in config["fact_lams"]:
        r = results[f"factorization-lam{lam:g}"]
        for i, (e, lo, hi, ok) in enumerate(zip(r["eta"], r["rho_lo"], r["rho_hi"], r["bracketed"])):
            star = (lo * hi) ** 0.5 if ok else float("nan")
            row = {"lam": lam, "eta": e, "rho_lo": lo, "rho_hi": hi, "rho_star": star, "bracketed": ok}
            fact.append(
                {**row, "diverged_at_max": r["diverged_at_max"][i], "diverged_at_sam_rho": r["diverged_at_sam_rho"][i]}
            )
    for unit in units(config):
        p = unit.params
        if p["kind"] == "net":
            key = {"method": p["method"], "lam": p.get("lam", ""), "rho": p["rho"], "seed": p["seed"], "eta": p["eta"]}
            run, rows = e8_runs.run_rows(key, p, results[unit.key], sharpness="sharpness")
            runs.append(run)
            curves += rows
    return {"phase": phase, "cycle": cycle, "factorization": fact, "net_runs": runs, "net_curves": curves}
