"""E8 — the edge of stability in a deep network follows Theorem 1's threshold.

With full-batch steps of size η, the top Hessian eigenvalue λ of a network's training loss rises
("progressive sharpening") until it reaches the largest curvature the optimizer can sustain, and then hovers
there: 2/η for GD (the edge of stability, Cohen et al. 2021). Theorem 1 says USAM near a minimum is GD on the
curvature λ + ρλ², stable iff η(λ + ρλ²) < 2, so USAM should hover at the root of ρλ² + λ = 2/η,

    λ* = (−1 + √(1 + 8ρ/η)) / (2ρ)  (:func:`stability_edge`),

well below 2/η, while SAM, whose perturbation ρ g/‖g‖ acts on the curvature as (ρ/‖g‖)λ², hovers at the
‖g_t‖-dependent edge λ(1 + ρλ/‖g_t‖) = 2/η (Long & Bartlett 2023), i.e. :func:`stability_edge` at ρ/‖g_t‖.

Setting: a tanh MLP 784-128-128-10 (PyTorch's default initialization under the run's seed) on the first 1 000
Fashion-MNIST training images, loss ½Σ_c (f_c − y_c)² on one-hot targets averaged over the images, full-batch
steps of plain SGD (no momentum) as the base optimizer; USAM = :class:`samkit.USAM`, SAM = :class:`samkit.SAM`
with ``eps=0``. Every ``eig_every`` steps λ is measured by Lanczos
(:func:`samkit.sharpness.top_eigenvalues`, relative tolerance ``eig_tol``) together with the loss and the
full-batch ‖g_t‖; the plateau of a run is the mean of λ over the measurements in the last third of its steps.
One training run is one cached work unit. Claims, computed from the saved curves, each judged per seed (the worst
run of the seed) on the 90% Student-t interval over the seeds (:mod:`samkit.experiments.stats`):

* E8.1 (control): GD's |plateau/(2/η) − 1| ≤ ``plateau_tol`` (5%) — if this fails low, the runs were too short for
  sharpening to reach the edge;
* E8.2: USAM's plateau at λ*, paired with GD on its seed: |(plateau/λ*) / (GD's plateau/(2/η)) − 1| ≤ ``plateau_tol``
  (edge-of-stability runs hover slightly above their edge — GD by 1–2.5% here — and USAM by the same factor on the
  same seed; unpaired, that shared bias took one seed set's interval over 5% with three seeds, paired it did not); Every USAM (η, ρ) has λ* ≤ ``max_edge_fraction`` (0.85) × 2/η and
  the λ* of two ρ at one η more than 2 × ``plateau_tol`` apart (both checked when the config is made), so this also
  says that the plateaus are not GD's edge and fall with ρ (earlier a claim of its own, which E8.2 implied);
* E8.3: SAM's plateau ≤ ``sam_max_fraction`` (0.6) × 2/η and its λ_t stays at the ‖g_t‖-dependent edge: the mean of
  λ_t / edge_t over the last third within ±``sam_edge_tol`` (7%) of 1.

A USAM or SAM run that diverges or never settles (last-third std/mean > ``stable_cv``) while GD at its η and seed
reached its own edge contradicts the prediction: the claim FAILs. Where GD did not reach its edge (plateau below
(1 − ``plateau_tol``) · 2/η, or unstable), that seed's runs were too short to say anything and are left out; with no
seed left the claim is NOT EXERCISED, and so is E8.2 when a USAM run starts above (1 − ``plateau_tol``) λ* (no
approach from below: "hovering at λ*" could be a run that never moved). The static part is checked
when the config is made: a (η, ρ) whose λ* is not clearly between the initial λ (``lambda_init_bound``, a
conservative bound: 34–40 measured on this MLP) and 2/η (at most ``max_edge_fraction`` · 2/η: a tiny ρ is
indistinguishable from GD) is refused with a :class:`~samkit.experiments.ConfigError`.

Presets: ``quick`` is one η = 0.03 (2 000 steps, λ every 100 steps), GD + USAM ρ ∈ {0.005, 0.01} + SAM ρ = 0.01,
seeds 0–4 (20 runs, ≈ 6 CPU-minutes); ``full`` is the prototype's grid: η ∈ {0.02 (4 000 steps),
0.03 (3 000 steps)}, USAM ρ ∈ {0.005, 0.01, 0.02} at 0.02 and {0.005, 0.01} at 0.03, SAM ρ = 0.01 at η = 0.02,
seeds 0–4, λ every 50 steps (40 runs); ``tiny`` (tests) seeds 0–4 of a 784-32-32-32-10 tanh MLP on the first 128 images at
η = 0.04, where the same dynamics play out in 1 000 steps (initial λ ≈ 20–27, so λ* of ρ ∈ {0.01, 0.02} = 36.6, 30.9
lies between it and 2/η = 50; SAM at ρ = 0.01). Each λ is measured from ``top_eigenvalues``' default start, not warm-started from the
previous eigenvector (``v0``), so no measurement depends on the one before; the measurements are most of a run's cost.

The package: :mod:`~samkit.experiments.e8.config` (presets, schema, the edge), :mod:`~samkit.experiments.e8.runs`
(units, one run, tables), :mod:`~samkit.experiments.e8.analysis` (computed once per finalize),
:mod:`~samkit.experiments.e8.claims` (one function per claim), :mod:`~samkit.experiments.e8.figures`.

Example:
    >>> round(stability_edge(0.02, 0.01), 3), stability_edge(0.02, 0.0)
    (61.803, 100.0)
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from samkit.experiments import register
from samkit.experiments._common import tanh_mlp_scope as scope_of
from samkit.experiments.base import Claim, Experiment, Figure, Scope, Table, Unit
from samkit.experiments.e8 import analysis, claims, config, figures, runs
from samkit.experiments.e8.config import stability_edge

__all__ = ["stability_edge", "EdgeOfStability"]


@register
class EdgeOfStability(Experiment):
    name = "E8"
    title = "The edge of stability in a deep network follows Theorem 1's threshold"
    summary = (
        "Full-batch GD, USAM and SAM on a tanh MLP (Fashion-MNIST subset, squared loss), several seeds: the top "
        "Hessian eigenvalue rises until the method's stability limit and hovers there — 2/η for GD, the root λ* of "
        "η(λ + ρλ²) = 2 for USAM (Theorem 1), the ‖g_t‖-dependent edge λ(1 + ρλ/‖g_t‖) = 2/η for SAM."
    )
    version = 2
    presets = config.PRESETS
    schema = config.SCHEMA
    run_unit = staticmethod(runs.run_unit)

    def validate(self, cfg: Mapping[str, Any]) -> None:
        """Every USAM/SAM step size is one of etas, etas and seeds distinct, no run twice, steps ≥ 3 measurements, every
        USAM (η, ρ) has its λ* clearly between the initial λ (lambda_init_bound) and max_edge_fraction × 2/η, and the
        λ* of two ρ at one η are further apart than ±plateau_tol can confuse."""
        config.validate(cfg)

    def missing(self, cfg: Mapping[str, Any]) -> str | None:
        """The dataset's problem (not installed, corrupt) before any unit starts, or ``None``."""
        return self.missing_if_fails(lambda: runs.load_data(cfg["dataset"], cfg["n_train"]))

    def units(self, cfg: Mapping[str, Any]) -> list[Unit]:
        return runs.units(cfg)

    def tables(self, cfg: Mapping[str, Any], results: Mapping[str, Mapping[str, Any]]) -> dict[str, list[dict]]:
        return runs.run_tables(cfg, results)

    def analyse(self, cfg: Mapping[str, Any], data: Mapping[str, Table]) -> analysis.Analysis:
        return analysis.analyse(cfg, data)

    def claims(self, cfg: Mapping[str, Any], data: Mapping[str, Table]) -> list[Claim]:
        return claims.claims(self.analysis(cfg, data), cfg)

    def scope(self, cfg: Mapping[str, Any]) -> list[Scope]:
        return [scope_of(cfg, ["E8.1", "E8.2", "E8.3"])]

    def figures(self, cfg: Mapping[str, Any], data: Mapping[str, Table], fig_dir: Path) -> list[Figure]:
        return figures.figures(cfg, self.analysis(cfg, data), data, fig_dir)
