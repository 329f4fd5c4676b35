"""E7's analysis of the saved tables, computed once per finalize and handed to the claims and the figures.

Everything is per seed first: SGD, SAM and USAM with the same seed share the initialisation and the batch order,
so each run is judged against SGD **on its own seed** (paired), and each claim's statistic is one number per seed
(:mod:`samkit.experiments.stats` turns those into an interval over seeds). A run *fails* when it diverged (a
non-finite loss or gradient) or finished with a test accuracy more than ``collapse_drop`` points below SGD's on its
seed (collapsed); the same rule for both methods. A seed whose SGD run diverged has no reference: it is left out
of every claim (and named).

Example:
    >>> dynamic_range([0.5, 0.05, 0.01])
    50.0
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from samkit.experiments.base import Table
from samkit.experiments.e7.config import METHODS, rho_grid
from samkit.experiments.e7.runs import num


def dynamic_range(values: Sequence[float] | np.ndarray) -> float:
    """max / min of the finite values (``nan`` when there are none, ``inf`` when the smallest is 0).

    >>> dynamic_range([2.0, float("nan"), 0.5])
    4.0
    """
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if not len(v):
        return float("nan")
    lo = float(v.min())
    return float(v.max()) / lo if lo > 0 else float("inf")


def geomean(values: Sequence[float]) -> float:
    """The geometric mean of positive values (NaN for none).

    >>> geomean([0.5, 2.0]), geomean([])
    (1.0, nan)
    """
    v = np.asarray(values, dtype=float)
    return float(np.exp(np.mean(np.log(v)))) if len(v) else float("nan")


@dataclass(frozen=True)
class Run:
    """One finished run: final numbers and its epoch-mean ‖g‖ / ‖ε‖ (first and last epoch, range)."""

    acc: float  # test accuracy in points (NaN when it diverged)
    diverged: bool
    loss: float  # final training loss
    lam: float  # final top Hessian eigenvalue of the training loss
    g_first: float
    g_last: float
    eps_last: float
    eps_mean: float
    eps_dyn: float  # max/min of the epoch-mean ‖ε‖ over training
    failed: bool = False  # diverged, non-finite, or collapsed below SGD (same seed) − collapse_drop

    @property
    def trains(self) -> bool:
        return not self.failed


@dataclass(frozen=True)
class Point:
    """One (method, ρ) of the grid over the seeds, for the figures and ``summary.csv``."""

    k: int
    rho: float
    acc: np.ndarray  # per seed (NaN where diverged)
    diverged: np.ndarray
    failed: np.ndarray
    loss_ratio: float  # median over finite seeds of loss / SGD's loss (same seed)
    lam_ratio: float  # median over finite seeds of λ / SGD's λ (same seed)
    eps_last: float  # medians over finite seeds
    eps_mean: float
    eps_dyn: float

    @property
    def trains(self) -> bool:
        """Every seed trains."""
        return bool(len(self.failed)) and not bool(self.failed.any())


@dataclass
class ModelAnalysis:
    """One model's runs on the grid, per (method, ρ index, seed), with SGD per seed, and the per-seed statistics."""

    model: str
    grid: list[float]
    lr: float
    seeds: list[int]  # the grid's seeds whose SGD run finished (the claims use these)
    sgd: dict[int, Run] = field(default_factory=dict)
    runs: dict[tuple[str, int, int], Run] = field(default_factory=dict)  # (method, ρ index, seed)
    notes: list[str] = field(default_factory=list)

    def trains(self, method: str, k: int, seed: int) -> bool:
        r = self.runs.get((method, k, seed))
        return r is not None and r.trains

    def stable_top(self, method: str, seed: int) -> int:
        """The index of the largest ρ up to which ``method`` trains at every grid point on ``seed`` (−1: it fails
        at the smallest). A lucky run above a failure does not count: the range ends at the first failure."""
        k = -1
        while k + 1 < len(self.grid) and self.trains(method, k + 1, seed):
            k += 1
        return k

    def low(self, stable_rho: float) -> list[int]:
        """The grid indices with ρ ≤ ``stable_rho``."""
        return [k for k, r in enumerate(self.grid) if r <= stable_rho * (1 + 1e-9)]

    def disagreement(self, seed: int, stable_rho: float) -> tuple[int, int]:
        """On ``seed``, over ρ ≤ ``stable_rho``: (grid points where USAM fails and SAM trains, where SAM fails and
        USAM trains)."""
        ks = self.low(stable_rho)
        u = sum(1 for k in ks if self.trains("sam", k, seed) and not self.trains("usam", k, seed))
        s = sum(1 for k in ks if self.trains("usam", k, seed) and not self.trains("sam", k, seed))
        return u, s

    def flat_points(self, method: str, seed: int, loss_match: float, at_work: float) -> tuple[list[int], bool]:
        """E7.3's runs of ``method`` on ``seed``: those that train to a matched loss (≤ ``loss_match`` × SGD's) with
        the perturbation at work (last-epoch mean ‖ε‖ ≥ ``at_work`` × lr × last-epoch mean ‖g‖); when there are
        none, every run that trains to a matched loss. Returns (ρ indices, whether the perturbation was at work)."""
        sgd = self.sgd[seed]
        matched = [
            k
            for k in range(len(self.grid))
            if self.trains(method, k, seed)
            and math.isfinite(self.runs[(method, k, seed)].lam)
            and self.runs[(method, k, seed)].loss <= loss_match * sgd.loss
        ]
        work = [k for k in matched if self.at_work(method, k, seed, at_work)]
        return (work, True) if work else (matched, False)

    def at_work(self, method: str, k: int, seed: int, at_work: float) -> bool:
        """Whether the run's late perturbation is not negligible: last-epoch mean ‖ε‖ ≥ ``at_work`` × lr × its
        last-epoch mean ‖g‖ (``at_work`` = 1: at least one SGD step)."""
        r = self.runs[(method, k, seed)]
        return bool(r.eps_last >= at_work * self.lr * r.g_last)

    def flatness(self, method: str, seed: int, loss_match: float, at_work: float) -> float:
        """Geometric mean of λ / λ_SGD (same seed) over :meth:`flat_points` (NaN when there are none)."""
        ks, _ = self.flat_points(method, seed, loss_match, at_work)
        return geomean([self.runs[(method, k, seed)].lam / self.sgd[seed].lam for k in ks])

    def eps_range(self, seed: int) -> float:
        """Geometric mean of USAM's ‖ε‖ max/min over its stable range on ``seed`` (NaN when it has none)."""
        top = self.stable_top("usam", seed)
        return geomean([self.runs[("usam", k, seed)].eps_dyn for k in range(top + 1)])

    def point(self, method: str, k: int) -> Point | None:
        """The seeds' runs of ``method`` at grid index ``k`` (None when there are none)."""
        rs = [(s, self.runs[(method, k, s)]) for s in self.seeds if (method, k, s) in self.runs]
        if not rs:
            return None
        fin = [(s, r) for s, r in rs if not r.diverged and math.isfinite(r.acc)]

        def med(values: list[float]) -> float:
            v = [x for x in values if math.isfinite(x)]
            return float(np.median(v)) if v else float("nan")

        return Point(
            k,
            self.grid[k],
            np.array([r.acc for _, r in rs]),
            np.array([r.diverged for _, r in rs]),
            np.array([r.failed for _, r in rs]),
            med([r.loss / self.sgd[s].loss for s, r in fin]),
            med([r.lam / self.sgd[s].lam for s, r in fin]),
            med([r.eps_last for _, r in fin]),
            med([r.eps_mean for _, r in fin]),
            med([r.eps_dyn for _, r in fin]),
        )

    def points(self, method: str) -> list[Point]:
        return [p for k in range(len(self.grid)) if (p := self.point(method, k)) is not None]

    @property
    def sgd_acc(self) -> float:
        """SGD's mean test accuracy over the claims' seeds (points; NaN when there are none)."""
        v = [self.sgd[s].acc for s in self.seeds]
        return float(np.mean(v)) if v else float("nan")

    def r_max(self, method: str) -> float:
        """Report only: the largest median last-epoch ‖ε‖ over the ρ at which every seed of ``method`` trains."""
        v = [p.eps_last for p in self.points(method) if p.trains and math.isfinite(p.eps_last)]
        return max(v) if v else float("nan")


def curves_by_run(curves: Table) -> dict[tuple, dict[str, np.ndarray]]:
    """Per run ``(model, method, lr, ρ, seed)``: its epoch-mean ‖g‖ and ‖ε‖ and train loss, in epoch order."""
    grouped: dict[tuple, list[dict]] = {}
    for r in curves.rows:
        key = (r["model"], r["method"], float(r["lr"]), float(r["rho"]), int(r["seed"]))
        grouped.setdefault(key, []).append(r)
    out = {}
    for key, rows in grouped.items():
        rows.sort(key=lambda r: int(r["epoch"]))
        out[key] = {c: np.array([num(r[c]) for r in rows]) for c in ("epoch", "grad_norm", "eps_norm", "train_loss")}
    return out


def _run(row: Mapping[str, Any], c: Mapping[str, np.ndarray] | None) -> Run:
    acc = 100.0 * num(row["test_acc"])
    diverged = bool(row["diverged"]) or not math.isfinite(acc)
    g = c["grad_norm"] if c else np.array([np.nan])
    e = c["eps_norm"] if c else np.array([np.nan])
    return Run(
        acc=float("nan") if diverged else acc,
        diverged=diverged,
        loss=num(row["train_loss"]),
        lam=num(row["top_eigenvalue"]),
        g_first=float(g[0]),
        g_last=float(g[-1]),
        eps_last=float(e[-1]),
        eps_mean=float(np.nanmean(e)) if np.isfinite(e).any() else float("nan"),
        eps_dyn=dynamic_range(e),
        failed=diverged,
    )


def analyse_model(config: Mapping[str, Any], data: Mapping[str, Table], model: str) -> ModelAnalysis:
    """Every grid run of ``model`` (found by ``rho_index``), judged against SGD on its own seed."""
    lr = float(config["lr"])
    grid = rho_grid(config)
    runs = data["runs"].where(model=model, lr=lr)
    curves = curves_by_run(data["curves"])
    drop = float(config["collapse_drop"])
    a = ModelAnalysis(model, grid, lr, [])
    for row in runs.where(method="sgd").rows:
        seed = int(row["seed"])
        if seed not in config["seeds"]:
            continue
        r = _run(row, curves.get((model, "sgd", lr, 0.0, seed)))
        if r.diverged:
            a.notes.append(f"SGD diverged on seed {seed} (no reference: seed left out)")
            continue
        a.sgd[seed] = r
    a.seeds = [s for s in config["seeds"] if s in a.sgd]
    missing = [s for s in config["seeds"] if s not in a.sgd and not any(f"seed {s} " in n for n in a.notes)]
    if missing:
        a.notes.append(f"no SGD run for seed(s) {missing}")
    for row in runs.rows:
        k, seed, m = int(row["rho_index"]), int(row["seed"]), row["method"]
        if m not in METHODS or k < 0 or seed not in a.sgd:
            continue
        r = _run(row, curves.get((model, m, lr, float(row["rho"]), seed)))
        failed = r.diverged or r.acc < a.sgd[seed].acc - drop
        a.runs[(m, k, seed)] = Run(**{**vars(r), "failed": failed})
    return a


def analyse(config: Mapping[str, Any], data: Mapping[str, Table]) -> dict[str, ModelAnalysis]:
    """:func:`analyse_model` for every model of the config."""
    return {m: analyse_model(config, data, m) for m in config["models"]}


def summary_rows(config: Mapping[str, Any], an: Mapping[str, ModelAnalysis]) -> list[dict]:
    """Per model and (method, ρ) of the grid: seeds, failures, medians of the paired ratios (for reading)."""
    rows = []
    for model, a in an.items():
        sgd = [a.sgd[s] for s in a.seeds]
        rows.append(
            {
                "model": model,
                "method": "sgd",
                "rho_index": -1,
                "rho": 0.0,
                "seeds": len(sgd),
                "acc_mean": a.sgd_acc,
                "train_loss": float(np.median([r.loss for r in sgd])) if sgd else float("nan"),
                "top_eigenvalue": float(np.median([r.lam for r in sgd])) if sgd else float("nan"),
            }
        )
        for method in METHODS:
            for p in a.points(method):
                fin = np.isfinite(p.acc)
                rows.append(
                    {
                        "model": model,
                        "method": method,
                        "rho_index": p.k,
                        "rho": p.rho,
                        "seeds": len(p.acc),
                        "diverged": int(p.diverged.sum()),
                        "failed": int(p.failed.sum()),
                        "trains": p.trains,
                        "acc_mean": float(np.mean(p.acc[fin])) if fin.any() else float("nan"),
                        "acc_min": float(np.min(p.acc[fin])) if fin.any() else float("nan"),
                        "loss_over_sgd": p.loss_ratio,
                        "lam_over_sgd": p.lam_ratio,
                        "eps_last": p.eps_last,
                        "eps_mean": p.eps_mean,
                        "eps_dynamic_range": p.eps_dyn,
                    }
                )
    return rows
