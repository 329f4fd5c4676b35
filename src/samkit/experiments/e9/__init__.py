"""E9 — normalization as a dial: unified SAM's stability threshold, divergence boundary and edge of stability for
every λ ∈ [0, 1].

The paper compares the two ends of the family ε = ρ((1−λ)g + λ g/‖g‖) (unified SAM, Oikonomou & Loizou 2025):
λ = 0 is USAM, λ = 1 is SAM. E9 asks how much normalization is needed, with each prediction derived in
:mod:`samkit.dynamics.theory` and measured beside it:

* **quadratic** (:func:`~samkit.dynamics.theory.unified_threshold`): the update is the linear map
  I − ηH − η(1−λ)ρH² plus a term of norm ≤ ηρλβ, so unified SAM is stable iff η(β + (1−λ)ρβ²) < 2 — exactly, for
  every λ (the normalized part only adds to the overshoot above the threshold). E9.1: the (η, ρ) phase diagram at
  every λ of ``lams`` agrees with it (≥ ``min_agreement`` of the cells outside ±``band``). Below the threshold it
  settles on the 2-cycle ±a e₁, a = ηρλβ/(2 − η(β + (1−λ)ρβ²)) (:func:`~samkit.dynamics.theory.unified_cycle_amplitude`).
  E9.2: measured within ``cycle_tol``. (The issue's "the neighbourhood grows with λρ" holds where USAM is stable;
  where it diverges, a falls from infinity as λ rises past the dial's threshold: the derivation says so, the claim
  states it, the figure shows both.)
* **scalar factorization** ½(xy)² from y0² = 1/η, x0 = y0/2 (Theorem 2's problem,
  :func:`~samkit.dynamics.theory.scalar_factorization_unified_boundary`): only the unnormalized part drives USAM's
  divergence, so the boundary moves from ρ*(0) ≈ η to ρ*(λ) = ρ*(0)/(1−λ), up to a relative correction of order
  κ = λρ*√η. E9.3: |(1−λ)ρ*(λ)/ρ*(0) − 1| ≤ ``boundary_tol`` wherever κ ≤ ``kappa_max`` (others reported), λ = 0 within
  Theorem 2's ρ*/η ∈ [0.5, 2], and SAM (λ = 1) bounded at ρ = ``sam_rho_max`` (1: Theorem 2's ρ = O(1)) at
  every η. SAM is not bounded for every ρ: once ρ is comparable to the distance y0 = η^(−1/2) to the minimum it
  diverges too, at ρ* ≈ 0.59/√η (measured at η = 0.002–0.05); the full preset's wider bracket shows it, report only.
* **deep net, full batch** (E8's setting and training loop,
  :func:`~samkit.dynamics.theory.unified_sharpness_edge`): the sharpness s hovers where
  η·s·(1 + ρ·s·((1−λ) + λ/‖g_t‖)) = 2. E9.4: per seed the worst λ's |mean s_t/edge_t − 1| over the last third,
  90% t-interval ≤ ``edge_tol``. E9.5: the plateau falls at every step of ``net_lams`` (per seed the smallest
  relative fall, interval > 0) — the prediction when ‖g_t‖ < 1, checked as a precondition (above 1 the edge rises
  in λ). Seeds where GD did not reach 2/η (the control that sharpening in this network reaches at least the edges
  tested; it runs ``gd_steps``, twice the dial's steps, because sharpening to 2/η takes longer than to the dial's
  lower edges — at 1 000 steps GD was still rising on 6 of 15 seeds outside the default ones), or where a run's
  plateau is within ``edge_tol`` of its starting sharpness (no approach to judge), are left out; none left → NOT
  EXERCISED.

Presets: ``quick`` (≈ 1 minute on 2 cores): λ ∈ {0, 0.25, 0.5, 0.75, 1} on a 60 × 41 grid, factorization λ ∈ {0, 0.25,
0.5, 0.75, 0.9, 1} at 5 η, deep net a tanh MLP 784-32-32-32-10 on the first 128 Fashion-MNIST images, η = 0.04,
ρ = 0.005, 1 000 steps, λ ∈ {0, 0.25, 0.5, 0.75, 1} and GD (2 000 steps), seeds 0–4 (30 runs). The issue suggested deep-net
λ ∈ {0, 0.5, 0.9, 1}; at ‖g_t‖ ≈ 0.2 the edges of 0.9 and 1 differ by about 2%, less than a plateau's own
fluctuation, so E9.5 could not tell them apart with five seeds: the quick preset spaces λ evenly instead, ``full``
adds 0.1 and 10 seeds. ``tiny`` (tests) has three λ and three seeds.

Example:
    >>> from samkit.experiments import get
    >>> [u.key for u in get("E9").units(get("E9").config("tiny"))][:4]
    ['quadratic-lam0', 'quadratic-lam0.5', 'quadratic-lam1', 'factorization-lam0']
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from samkit.experiments import register
from samkit.experiments._common import tanh_mlp_scope as scope_of
from samkit.experiments.base import Claim, Experiment, Figure, Scope, Table, Unit
from samkit.experiments.e9 import analysis, claims, config, figures, runs

__all__ = ["NormalizationDial"]


@register
class NormalizationDial(Experiment):
    name = "E9"
    title = "Normalization as a dial: unified SAM from USAM (λ = 0) to SAM (λ = 1)"
    summary = (
        "Unified SAM, ε = ρ((1−λ)g + λg/‖g‖), along λ ∈ [0, 1]: the quadratic's stability threshold "
        "2/(β + (1−λ)ρβ²) and 2-cycle, the scalar factorization's divergence boundary ρ*(0)/(1−λ), and a deep net's "
        "edge of stability, each predicted and measured side by side."
    )
    presets = config.PRESETS
    schema = config.SCHEMA
    run_unit = staticmethod(runs.run_unit)

    def validate(self, cfg: Mapping[str, Any]) -> None:
        """See :func:`samkit.experiments.e9.config.validate`."""
        config.validate(cfg)

    def missing(self, cfg: Mapping[str, Any]) -> str | None:
        """The dataset's problem (not installed, corrupt) before any unit starts, or ``None``."""
        from samkit.experiments.e8.runs import load_data

        return self.missing_if_fails(lambda: load_data(cfg["dataset"], cfg["n_train"]))

    def units(self, cfg: Mapping[str, Any]) -> list[Unit]:
        return runs.units(cfg)

    def tables(self, cfg: Mapping[str, Any], results: Mapping[str, Mapping[str, Any]]) -> dict[str, list[dict]]:
        return runs.run_tables(cfg, results)

    def analyse(self, cfg: Mapping[str, Any], data: Mapping[str, Table]) -> analysis.Analysis:
        return analysis.analyse(cfg, data)

    def claims(self, cfg: Mapping[str, Any], data: Mapping[str, Table]) -> list[Claim]:
        return claims.claims(self.analysis(cfg, data), cfg, data)

    def scope(self, cfg: Mapping[str, Any]) -> list[Scope]:
        return [scope_of(cfg, ["E9.4", "E9.5"])]

    def figures(self, cfg: Mapping[str, Any], data: Mapping[str, Table], fig_dir: Path) -> list[Figure]:
        return figures.figures(cfg, self.analysis(cfg, data), data, fig_dir)
