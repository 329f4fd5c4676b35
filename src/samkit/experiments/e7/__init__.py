"""E7 — deep networks near interpolation: SAM is robust to ρ where USAM is not, and why.

The paper's argument is about a mechanism. USAM's perturbation is ε = ρ∇L, so its length ρ‖g‖ is large early in
training (where it destabilizes) and vanishes near a minimum (where USAM then behaves like plain SGD); SAM's is
ρ∇L/‖∇L‖, of length ρ throughout. The mechanism is put to work only where ‖g‖ really decays: on a network trained
towards interpolation (a small training set, many epochs, a constant learning rate near SGD's edge of stability).

Setting: for each model of ``models``, SGD, SAM and USAM (:func:`samkit.train.train`, plain SGD as the base
optimizer: no momentum, no weight decay) on the first ``subset`` Fashion-MNIST training images, batch
``batch_size``, ``epochs`` epochs at learning rate ``lr``, constant and then linear to 0 over the last
``decay_frac`` of the steps, ρ on a log grid from ``rho_min`` to ``rho_max`` (computed once, :func:`rho_grid`; each
run stores its index), every seed of ``seeds``. SGD, SAM and USAM with the same seed share the initialisation and
the batch order, so every run is judged against SGD **on its own seed**. ``samkit.train`` logs ‖g‖ and ‖ε‖ at every
step; their epoch means are kept. At the end: the test accuracy on the first ``test_subset`` test images, and the
top Hessian eigenvalue λ of the training loss (Lanczos) on ``sharpness_batches`` × ``sharpness_batch_size``
training images. A run *fails* when it diverged or its test accuracy is more than ``collapse_drop`` points below
SGD's on its seed (collapsed): one rule for both methods.

Claims, per model (ids ``E7.k-<model>``): each computes one number per seed and judges its 90% Student-t interval
over the seeds (:mod:`samkit.experiments.stats`: PASS when the interval lies wholly on the claim's side of the
threshold, FAIL when wholly on the other, INCONCLUSIVE when it straddles):

* E7.0 (the precondition): log10 of USAM's epoch-mean ‖ε‖ max/min (geometric mean over the ρ of its stable range,
  the ρ up to its first failure) ≥ log10 ``min_dynamic_range`` (10×). Unless it PASSes, E7.1–E7.4 are NOT
  EXERCISED (their numbers are still shown): the setting did not put the mechanism to work;
* E7.1: SAM's stable range reaches at least ``min_grid_steps`` (1) grid steps further in ρ than USAM's (per seed:
  the index of SAM's last ρ before its first failure minus USAM's). A tie — both train up to the same ρ — gives 0
  and FAILs;
* E7.2: over ρ ≤ ``stable_rho`` (1), per seed: (grid ρ where USAM fails and SAM trains) − (grid ρ where SAM fails
  and USAM trains) > 0 — a SAM failure counts against the claim exactly as a USAM failure counts for it;
* E7.3: at matched training loss (≤ ``loss_match`` × SGD's on the seed) SAM ends flatter than SGD and USAM does
  not: per seed the geometric mean of λ/λ_SGD over the ρ at which the method trains to a matched loss with its
  perturbation at work (last-epoch mean ‖ε‖ ≥ ``eps_at_work`` × lr × its last-epoch mean ‖g‖: not below one SGD
  step), or, where it never is, over every ρ at which it trains to a matched loss; SAM's interval ≤ ``flat_ratio``
  (0.75) and USAM's > ``flat_ratio``. (USAM's late ‖ε‖ = ρ‖g‖ reaches one SGD step η‖g‖ only at ρ ≥ η, where it
  does not train to a matched loss: it is judged on every ρ where it does — the most chances to look flat);
* E7.4: both methods fail on every seed at the top of the grid, so the grid reaches past both stable ranges.

Findings (:mod:`~samkit.experiments.e7.findings`, in the report's summary): for each model whose precondition
holds but whose robustness claims (E7.1, E7.2) do not both PASS, what happened instead — "reverses" when an interval
lies wholly on the wrong side — with the mechanism's numbers: ‖g‖'s fall, each method's stable range, the realised
‖ε‖, test accuracy where SAM fails, and the largest realised mean ‖ε‖ each method trains with. The report's summary
also names every architecture and data set the claims were judged on (:meth:`RhoRobustness.scope`).

Reported, not judged (figures and their captions, ``data/summary.csv``): test accuracy against ρ and against the
realised mean ‖ε‖, r_max (the largest median late ‖ε‖ at which a method trains: it compares realised radii, which
differ by 1/‖g_T‖ even when both methods train at the same ρ, so it cannot test robustness to ρ), the windows in
decades, ‖g‖ and ‖ε‖ over training, the Hessian spectrum and a learning-rate sweep (``lr_sweep`` at ρ =
``lr_sweep_rho``, seeds ``lr_sweep_seeds``).

Presets: ``quick`` is the MLP (784-256-256-10) on 1 000 images, batch 100, 100 epochs, lr 0.3, ρ ∈ 10^{−2, −1.5,
…, 0.5}, seeds 0–13, λ on 1 000 training images, the lr sweep {0.1, 0.3, 0.6} at ρ = 0.1 (seed 0); 188 runs. (ρ =
10^−3 and 10^−2.5 were dropped for four more seeds: no run of either method failed there in 38 seeds measured.)
``medium`` (about an hour on 2 cores) is the quick setting on three architectures — the MLP, ``cnn-small`` (two
conv3x3-ReLU-maxpool blocks of 8 and 16 channels, no normalization) and ``cnn-small-bn`` (the same with BatchNorm
after each convolution) — on seeds 0–7: 330 runs, one verdict per architecture. ResNet-20 does not fit its hour
(5.3 s per SAM epoch of 1 000 images on one core, 26× the small CNN). ``full`` (for a GPU) has 10 seeds, a quarter-decade grid from 10^−3 and three models — the MLP, the small CNN (``cnn``, no
BatchNorm) and ResNet-20 (BatchNorm) — on 5 000 images for 220 epochs (the last 22 decaying): one verdict per
architecture. Prototypes of small CNNs *reversed* the claim (SAM collapsed at ρ ≥ 1 while USAM, whose ‖g‖
shrinks, kept training): the full preset reports per architecture what holds. ``tiny`` (tests) is the MLP on 150
images, batch 50, 60 epochs, seeds {0, 1, 2}, ρ ∈ 10^{−2, −1.5, …, 1}: the same mechanism in seconds (where it is too
weak to decide E7.1–E7.3: both methods train up to ρ ≈ 0.1–0.3 on some seeds, so those come out INCONCLUSIVE).
The design, the calibration and the numbers measured are in ``docs/e7-notes.md``. Every run is one cached work
unit (its cache key covers :mod:`samkit.experiments.e7.runs`, not the analysis), so an interrupted sweep resumes.
Fashion-MNIST comes from the Debian package ``dataset-fashion-mnist`` or ``$SAMKIT_DATA_DIR``.

The package: :mod:`~samkit.experiments.e7.config` (presets, schema, grid), :mod:`~samkit.experiments.e7.runs` (units,
one training run, tables), :mod:`~samkit.experiments.e7.analysis` (computed once per finalize),
:mod:`~samkit.experiments.e7.claims` (one function per claim), :mod:`~samkit.experiments.e7.figures`.

Example:
    >>> from samkit.experiments import get
    >>> cfg = get("E7").config("quick")
    >>> cfg["models"], cfg["subset"], cfg["epochs"], cfg["lr"], len(cfg["seeds"]), len(get("E7").units(cfg))
    (['mlp'], 1000, 100, 0.3, 14, 188)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from samkit.experiments import register
from samkit.experiments.base import Claim, Experiment, Figure, Scope, Table, Unit
from samkit.experiments.e7 import analysis, claims, config, figures, findings, runs
from samkit.experiments.e7.analysis import dynamic_range
from samkit.experiments.e7.config import rho_grid

__all__ = ["RhoRobustness", "dynamic_range", "rho_grid"]


@register
class RhoRobustness(Experiment):
    name = "E7"
    title = "Deep networks near interpolation: robustness to ρ, and why"
    summary = (
        "SGD, SAM and USAM trained towards interpolation (Fashion-MNIST subset, many epochs, constant lr near the edge "
        "of stability, then a short decay) over a ρ grid and several seeds, each run paired with SGD on its seed: "
        "where ‖g‖ decays, USAM's perturbation ρ‖g‖ is large early and vanishes late; the claim tested is that SAM "
        "then keeps training at ρ where USAM fails and ends flatter than SGD at matched loss. Verdicts from "
        "intervals over seeds, one per architecture."
    )
    version = 3
    device_units = True
    presets = config.PRESETS
    schema = config.SCHEMA
    run_unit = staticmethod(runs.run_unit)

    def validate(self, cfg: Mapping[str, Any]) -> None:
        """n_rho >= 2; rho_min <= stable_rho < rho_max; seeds distinct; the eigenvalue images fit in subset; models
        distinct."""
        config.validate(cfg)

    def missing(self, cfg: Mapping[str, Any]) -> str | None:
        """The dataset's problem (not installed, corrupt) before any unit starts, or ``None``."""
        return self.missing_if_fails(lambda: runs.load_data(cfg["dataset"]))

    def units(self, cfg: Mapping[str, Any]) -> list[Unit]:
        return runs.units(cfg)

    def tables(self, cfg: Mapping[str, Any], results: Mapping[str, Mapping[str, Any]]) -> dict[str, list[dict]]:
        out = runs.run_tables(cfg, results)
        an = analysis.analyse(cfg, {"runs": Table(out["runs"]), "curves": Table(out["curves"])})
        return {**out, "summary": analysis.summary_rows(cfg, an)}

    def analyse(self, cfg: Mapping[str, Any], data: Mapping[str, Table]) -> dict[str, analysis.ModelAnalysis]:
        return analysis.analyse(cfg, data)

    def claims(self, cfg: Mapping[str, Any], data: Mapping[str, Table]) -> list[Claim]:
        an = self.analysis(cfg, data)
        return [c for m in cfg["models"] for c in claims.model_claims(an[m], cfg)]

    def findings(self, cfg: Mapping[str, Any], data: Mapping[str, Table], claims: Sequence[Claim]) -> list[str]:
        return findings.findings(self.analysis(cfg, data), claims)

    def scope(self, cfg: Mapping[str, Any]) -> list[Scope]:
        return config.scope(cfg)

    def figures(self, cfg: Mapping[str, Any], data: Mapping[str, Table], fig_dir: Path) -> list[Figure]:
        return figures.figures(cfg, self.analysis(cfg, data), data, fig_dir)
