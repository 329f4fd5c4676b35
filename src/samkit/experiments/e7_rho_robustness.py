"""E7 — deep networks near interpolation: SAM tolerates a far larger realised perturbation than USAM.

The paper's argument is about a mechanism. USAM's perturbation is ε = ρ∇L, so its length ρ‖g‖ is large early in
training (where it destabilizes) and vanishes near a minimum (where USAM then behaves like plain SGD); SAM's is
ρ∇L/‖∇L‖, of length ρ throughout. The mechanism is put to work only where ‖g‖ really decays: on a network trained
towards interpolation (a small training set, many epochs, a constant learning rate near SGD's edge of stability).

Setting: for each model of ``models``, SGD, SAM and USAM (:func:`samkit.train.train`, plain SGD as the base
optimizer: no momentum, no weight decay) on the first ``subset`` Fashion-MNIST training images, batch
``batch_size``, ``epochs`` epochs at learning rate ``lr``, constant and then linear to 0 over the last
``decay_frac`` of the steps (``schedule="decay"``; without the decay SAM's final iterate shows late loss spikes),
ρ on a log grid from ``rho_min`` to ``rho_max``, every seed of ``seeds``. ``samkit.train`` logs ‖g‖ and ‖ε‖ at
every step; their epoch means are kept. At the end: the test accuracy on the first ``test_subset`` test images,
and the top Hessian eigenvalue λ of the training loss (Lanczos) on ``sharpness_batches`` × ``sharpness_batch_size``
training images. SGD, the reference, also runs the ``reference_seeds``: its final λ varies by ±20% from seed to seed
(0.69–1.19 over 8 seeds of the quick setting), and a median of the grid's two seeds made E7.3's ratio λ/λ_SGD swing
across its threshold. A run *trains* when it finishes finite with a test accuracy at least SGD's (mean over seeds)
minus ``collapse_drop`` points; otherwise it *failed* (diverged, or collapsed). A method trains at a ρ when every
seed does. Claims, per model (ids ``E7.k-<model>``), computed from the saved tables:

* E7.0 (the precondition): USAM's epoch-mean ‖ε‖ varies by at least ``min_dynamic_range`` (10×) over training at the
  largest ρ at which it trains (median over seeds). Verdict PASS, or NOT EXERCISED: the claims below are then
  NOT EXERCISED as well (their numbers are still shown), since the setting did not put the mechanism to work;
* E7.1: r_max(SAM) / r_max(USAM) ≥ ``min_rmax_ratio`` (10), r_max being the largest median last-epoch ‖ε‖ over the
  ρ at which the method trains — the scale-free form of "robust to ρ" (a window in raw ρ is not: as ρ → 0 both
  methods are SGD, and ‖g‖ rescales USAM's ρ);
* E7.2: SAM never diverges at ρ ≤ ``stable_rho`` (1); USAM diverges or collapses at least once there;
* E7.3: at matched training loss (final train loss ≤ ``loss_match`` × SGD's), SAM ends flatter than SGD and USAM
  does not: min over those ρ of λ/λ_SGD ≤ ``flat_ratio`` (0.75) for SAM and > ``flat_ratio`` for USAM (medians
  over seeds);
* E7.4: both methods fail (every seed) at the top of the grid, ``rho_max``.

Reported, not judged (figures and their captions, and ``data/summary.csv``): test accuracy against ρ and against
the realised mean ‖ε‖ (the fair comparison of the two methods), the windows in decades (ρ where each method
trains, and where it is within ``window_points`` of SGD), ‖g‖ and ‖ε‖ over training, and a learning-rate sweep
(``lr_sweep`` at ρ = ``lr_sweep_rho``, seeds ``lr_sweep_seeds``, SGD at the same learning rates).

Presets: ``quick`` is the MLP (784-256-256-10) on 1 000 images, batch 100, 100 epochs, lr 0.3, ρ ∈ 10^{−3, −2.5,
…, 0.5}, seeds {0, 1} (SGD: seeds 0–5), λ on 1 000 training images, the lr sweep {0.1, 0.3, 0.6} at ρ = 0.1
(seed 0); 44 runs.
``full`` (for a GPU) has 5 seeds, a quarter-decade grid and three models — the MLP, the small CNN (``cnn``, no
BatchNorm) and ResNet-20 (BatchNorm) — on 5 000 images for 220 epochs (the last 22 decaying): one verdict per
architecture. Prototypes of small CNNs *reversed* the claim (SAM collapsed at ρ ≥ 1 while USAM, whose ‖g‖
shrinks, kept training): the full preset reports per architecture what holds. ``tiny`` (tests) is the MLP on 150
images, batch 50, 60 epochs, one seed, ρ ∈ {0.01, 0.1, 1, 10}: the same mechanism in seconds (its E7.3 is
seed-sensitive, see the notes).
The design, the calibration and the numbers measured are in ``docs/e7-notes.md``. Every run is one cached work
unit, so an interrupted sweep resumes. Fashion-MNIST comes from the Debian package ``dataset-fashion-mnist`` or
``$SAMKIT_DATA_DIR`` (see :mod:`samkit.data`).

Example:
    >>> dynamic_range([0.5, 0.05, 0.01])
    50.0
    >>> from samkit.experiments import get
    >>> cfg = get("E7").config("quick")
    >>> cfg["models"], cfg["subset"], cfg["epochs"], cfg["lr"], len(get("E7").units(cfg))
    (['mlp'], 1000, 100, 0.3, 44)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.ticker import FormatStrFormatter

from samkit.data import DATASETS
from samkit.experiments import Claim, ConfigError, Experiment, Figure, Param, Table, Unit, fmt, register
from samkit.experiments._common import grid_keys, logspace
from samkit.experiments.plotting import METHOD_STYLE, method_label, new_figure, plt, save_figure
from samkit.models import MODELS
from samkit.train import SCHEDULES

__all__ = ["dynamic_range", "RhoRobustness"]

METHODS = ("sam", "usam")
#: Config keys that every training run receives unchanged.
_TRAIN_KEYS = (
    "device",
    "dataset",
    "subset",
    "test_subset",
    "epochs",
    "batch_size",
    "momentum",
    "weight_decay",
    "schedule",
    "decay_frac",
    "sharpness_batches",
    "sharpness_batch_size",
    "sharpness_iters",
)
#: Test images that ``samkit.train`` evaluates after every epoch. E7 uses only the final model's test accuracy, which
#: it measures itself on ``test_subset`` images: 10 000 images every epoch would cost as much as the training.
_EPOCH_TEST_IMAGES = 10
_RUN_KEY = ("model", "method", "lr", "rho", "seed")


def dynamic_range(values: Sequence[float]) -> float:
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


def _num(v: Any) -> float:
    """A float, NaN for a missing value (``None`` or an empty cell) or a non-finite one saved as text."""
    if v is None or v == "":
        return float("nan")
    return float(v)


def _preset(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "seed": 0,
        "device": "cpu",
        "dataset": "fashion-mnist",
        "models": ["mlp"],
        "subset": 1000,
        "test_subset": 10000,
        "epochs": 100,
        "batch_size": 100,
        "lr": 0.3,
        "momentum": 0.0,
        "weight_decay": 0.0,
        "schedule": "decay",
        "decay_frac": 0.1,
        "rho_min": 0.001,
        "rho_max": 3.16228,
        "n_rho": 8,
        "seeds": [0, 1],
        "reference_seeds": [2, 3, 4, 5],
        "lr_sweep": [0.1, 0.3, 0.6],
        "lr_sweep_rho": 0.1,
        "lr_sweep_seeds": [0],
        "sharpness_batches": 4,
        "sharpness_batch_size": 250,
        "sharpness_iters": 20,
        "density_rho": 0.1,
        "density_probes": 4,
        "density_steps": 40,
        "collapse_drop": 10.0,
        "min_dynamic_range": 10.0,
        "min_rmax_ratio": 10.0,
        "stable_rho": 1.0,
        "loss_match": 2.0,
        "flat_ratio": 0.75,
        "window_points": 1.0,
    }
    base.update(kw)
    return base


_DATA_CACHE: dict[str, Any] = {}


def _data(dataset: str) -> Any:
    """The full ``(train, test)`` of a dataset, loaded once per process."""
    from samkit.data import DataError, load_dataset

    if dataset not in _DATA_CACHE:
        try:
            _DATA_CACHE[dataset] = load_dataset(dataset)
        except DataError as err:
            raise ConfigError(f"E7: {err}") from None
    return _DATA_CACHE[dataset]


def _spectrum(model: Any, train: Any, params: Mapping[str, Any]) -> list[list[list[float]]]:
    """Stochastic Lanczos quadrature of the final model's training-loss Hessian: per probe, nodes and weights."""
    import torch

    from samkit.sharpness import spectral_density

    n = params["sharpness_batches"] * params["sharpness_batch_size"]
    bs = params["sharpness_batch_size"]
    batches = [train.batch(torch.arange(i, min(i + bs, n))) for i in range(0, n, bs)]
    d = spectral_density(
        model,
        torch.nn.functional.cross_entropy,
        batches,
        n_probes=params["density"]["probes"],
        n_steps=params["density"]["steps"],
        seed=params["seed"],
    )
    return [[nd.tolist(), wt.tolist()] for nd, wt in zip(d.nodes, d.weights)]


def _evaluate(model: Any, test: Any, batch: int = 1000) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` (in eval mode) on a whole :class:`~samkit.data.ArrayDataset`."""
    import torch
    import torch.nn.functional as F

    model.eval()
    loss = correct = 0.0
    with torch.no_grad():
        for i in range(0, len(test), batch):
            x, y = test.batch(torch.arange(i, min(i + batch, len(test))))
            out = model(x)
            loss += float(F.cross_entropy(out, y, reduction="sum"))
            correct += float((out.argmax(1) == y).sum())
    return loss / len(test), correct / len(test)


# -- analysis of the tables --------------------------------------------------------------------------------------------
@dataclass
class _Point:
    """One (method, ρ) of a model at the grid's learning rate: its seeds and their medians."""

    rho: float
    acc: np.ndarray  # test accuracy per seed, in points (NaN where the run diverged)
    diverged: np.ndarray  # per seed
    failed: np.ndarray  # per seed: diverged, non-finite, or collapsed below SGD − collapse_drop
    loss: float  # median final training loss over the seeds that finished finite
    lam: float  # median final top Hessian eigenvalue over those seeds
    eps_last: float  # median last-epoch mean ‖ε‖ over those seeds
    eps_mean: float  # median over those seeds of the mean ‖ε‖ over training
    eps_dyn: float  # median over those seeds of max/min of the epoch-mean ‖ε‖

    @property
    def trains(self) -> bool:
        return bool(len(self.failed)) and not bool(self.failed.any())


@dataclass
class _Model:
    """Everything the claims and figures of one model need."""

    model: str
    sgd_acc: float = float("nan")  # mean over seeds, points
    sgd_loss: float = float("nan")
    sgd_lam: float = float("nan")
    sgd_ok: bool = False
    sgd_note: str = ""
    points: dict[str, list[_Point]] = field(default_factory=dict)

    def trained(self, method: str) -> list[_Point]:
        return [p for p in self.points.get(method, []) if p.trains]

    def r_max(self, method: str) -> float:
        """The largest median last-epoch ‖ε‖ over the ρ at which ``method`` trains (NaN if none)."""
        vals = [p.eps_last for p in self.trained(method) if math.isfinite(p.eps_last)]
        return max(vals) if vals else float("nan")

    def top_trained(self, method: str) -> _Point | None:
        t = self.trained(method)
        return max(t, key=lambda p: p.rho) if t else None


def _run_curves(curves: Table) -> dict[tuple, dict[str, np.ndarray]]:
    """Per run ``(model, method, lr, ρ, seed)``: its epoch-mean ‖g‖ and ‖ε‖ and train loss, in epoch order."""
    grouped: dict[tuple, list[dict]] = {}
    for r in curves.rows:
        key = (r["model"], r["method"], float(r["lr"]), float(r["rho"]), int(r["seed"]))
        grouped.setdefault(key, []).append(r)
    out = {}
    for key, rows in grouped.items():
        rows.sort(key=lambda r: int(r["epoch"]))
        out[key] = {c: np.array([_num(r[c]) for r in rows]) for c in ("epoch", "grad_norm", "eps_norm", "train_loss")}
    return out


def _analyse(config: Mapping[str, Any], data: Mapping[str, Table], model: str) -> _Model:
    """The SGD reference and every (method, ρ) point of ``model`` on the ρ grid (at the grid's learning rate)."""
    lr = float(config["lr"])
    runs = data["runs"].where(model=model, lr=lr)
    curves = _run_curves(data["curves"])
    drop = float(config["collapse_drop"])
    m = _Model(model)
    sgd = runs.where(method="sgd")
    if not len(sgd):
        m.sgd_note = "no SGD run"
    else:
        acc = 100.0 * sgd.col("test_acc")
        div = sgd.col("diverged").astype(bool) | ~np.isfinite(acc)
        if div.any():
            m.sgd_note = f"SGD diverged ({int(div.sum())}/{len(sgd)} seeds)"
        else:
            m.sgd_ok = True
            m.sgd_acc = float(acc.mean())
            m.sgd_loss = float(np.median(sgd.col("train_loss")))
            m.sgd_lam = float(np.median(sgd.col("top_eigenvalue")))
    grid = logspace(config["rho_min"], config["rho_max"], config["n_rho"])
    for method in METHODS:
        t = runs.where(method=method)
        pts = []
        for rho in sorted({float(r) for r in t.col("rho")}):
            if not any(math.isclose(rho, g, rel_tol=1e-6) for g in grid):
                continue  # a learning-rate sweep run at an off-grid ρ
            s = t.where(rho=rho)
            acc = 100.0 * s.col("test_acc")
            div = s.col("diverged").astype(bool)
            fin = ~div & np.isfinite(acc)
            failed = ~fin | (acc < m.sgd_acc - drop) if m.sgd_ok else ~fin
            eps = [curves.get((model, method, lr, rho, int(seed)), {}) for seed in s.col("seed")]

            def med(values: Any, ok: np.ndarray = fin) -> float:
                v = np.asarray(values, dtype=float)[ok]
                v = v[np.isfinite(v)]
                return float(np.median(v)) if len(v) else float("nan")

            last = [e["eps_norm"][-1] if e else np.nan for e in eps]
            mean = [float(np.mean(e["eps_norm"])) if e else np.nan for e in eps]
            dyn = [dynamic_range(e["eps_norm"]) if e else np.nan for e in eps]
            pts.append(
                _Point(
                    rho,
                    np.where(fin, acc, np.nan),
                    div,
                    failed,
                    med(s.col("train_loss")),
                    med(s.col("top_eigenvalue")),
                    med(last),
                    med(mean),
                    med(dyn),
                )
            )
        m.points[method] = pts
    return m


def _accuracy_axes(ax: Any, diverged: str, xlabel: str, title: str) -> None:
    """Finish a test-accuracy panel (log x, 0–100%); ``diverged``: the legend text of the × drawn, '' if none is."""
    if diverged:  # the legend shows the marker only where one is drawn
        ax.scatter([], [], marker="x", s=80, color="k", label=f"{diverged} (drawn at 10%)")
    ax.set_xscale("log")
    ax.set_ylim(0, 100)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="lower left")


def _decades(lo: float, hi: float) -> float:
    return math.log10(hi / lo) if lo > 0 and hi > 0 else float("nan")


def _window(points: Sequence[_Point], ok: Any) -> str:
    """The ρ where ``ok(point)`` holds, as 'ρ ∈ [a, b] (d decades)' over its extremes (or 'none')."""
    rhos = [p.rho for p in points if ok(p)]
    if not rhos:
        return "none"
    gaps = len(rhos) < len([p for p in points if min(rhos) <= p.rho <= max(rhos)])
    return (
        f"ρ ∈ [{fmt(min(rhos))}, {fmt(max(rhos))}] ({_decades(min(rhos), max(rhos)):.1f} decades"
        + (", with gaps" if gaps else "")
        + ")"
    )


@register
class RhoRobustness(Experiment):
    name = "E7"
    title = "Deep networks near interpolation: robustness to ρ, and why"
    summary = (
        "SGD, SAM and USAM trained towards interpolation (Fashion-MNIST subset, many epochs, constant lr near the edge "
        "of stability, then a short decay) over a ρ grid: where ‖g‖ decays, USAM's perturbation ρ‖g‖ is large early "
        "and vanishes late, so SAM tolerates a ≥10× larger late perturbation, does not diverge where USAM does, and "
        "ends flatter than SGD at matched loss. One verdict per architecture."
    )
    version = 2
    device_units = True
    presets = {
        "tiny": _preset(
            subset=150,
            test_subset=2000,
            epochs=60,
            batch_size=50,
            rho_min=0.01,
            rho_max=10.0,
            n_rho=4,
            seeds=[0],
            reference_seeds=[0],
            lr_sweep=[0.3],
            sharpness_batches=1,
            sharpness_batch_size=150,
        ),
        "quick": _preset(),
        "full": _preset(
            models=["mlp", "cnn", "resnet20"],
            subset=5000,
            epochs=220,
            n_rho=15,
            seeds=[0, 1, 2, 3, 4],
            reference_seeds=[5, 6, 7],
            lr_sweep_seeds=[0, 1],
        ),
    }
    schema = {
        "seed": Param(int, "seed recorded with the results (the runs use seeds and lr_sweep_seeds)", min=0),
        "device": Param(
            str,
            "torch device of the training runs: cpu (the same numbers on every machine) or cuda (the GPU the executor "
            "gives the unit; other numbers, and other cache keys)",
            choices=("cpu", "cuda"),
        ),
        "dataset": Param(str, "training data ('synthetic' needs no files)", choices=DATASETS),
        "models": Param(list[str], "the networks; one verdict per model", choices=MODELS),
        "subset": Param(int, "training images used (the first N)", min=1),
        "test_subset": Param(int, "test images of the final accuracy (the first N)", min=1),
        "epochs": Param(int, "epochs of every run", min=1),
        "batch_size": Param(int, "mini-batch size", min=1),
        "lr": Param(float, "learning rate of the ρ grid (before the final decay)", min=0, strict=True),
        "momentum": Param(float, "SGD momentum of the base optimizer", min=0, below=1),
        "weight_decay": Param(float, "weight decay", min=0),
        "schedule": Param(str, "learning-rate schedule", choices=SCHEDULES),
        "decay_frac": Param(
            float, "schedule 'decay': fraction of the steps over which the lr falls to 0", min=0, max=1, strict=True
        ),
        **grid_keys("rho", "ρ of the grid", "log-spaced"),
        "seeds": Param(list[int], "seeds of the ρ grid (one run per model, method, ρ and seed)", min=0),
        "reference_seeds": Param(
            list[int], "more seeds of the SGD reference only (with seeds; a seed in both runs once)", min=0
        ),
        "lr_sweep": Param(list[float], "learning rates of the sweep (report only)", min=0, strict=True),
        "lr_sweep_rho": Param(float, "ρ of the learning-rate sweep", min=0, strict=True),
        "lr_sweep_seeds": Param(list[int], "seeds of the learning-rate sweep", min=0),
        "sharpness_batches": Param(int, "training batches of the final top-eigenvalue measurement", min=1),
        "sharpness_batch_size": Param(int, "images per batch of the top-eigenvalue measurement", min=1),
        "sharpness_iters": Param(int, "Lanczos iterations (at most) of the top-eigenvalue measurement", min=2),
        "density_rho": Param(
            float, "report only: SAM and USAM at the grid ρ nearest this get a Hessian spectrum", min=0, strict=True
        ),
        "density_probes": Param(int, "report only: probes of the spectral density (stochastic Lanczos)", min=1),
        "density_steps": Param(int, "report only: Lanczos steps per probe of the spectral density", min=2),
        "collapse_drop": Param(
            float, "a finite run collapsed when its test accuracy is this many points below SGD's", min=0, strict=True
        ),
        "min_dynamic_range": Param(float, "E7.0: USAM's ‖ε‖ max/min needed to exercise the mechanism", min=1),
        "min_rmax_ratio": Param(float, "E7.1: r_max(SAM) / r_max(USAM) at least this", min=1),
        "stable_rho": Param(float, "E7.2: the ρ up to which SAM must not diverge", min=0, strict=True),
        "loss_match": Param(float, "E7.3: matched training loss = at most this × SGD's", min=1),
        "flat_ratio": Param(float, "E7.3: flatter = λ/λ_SGD at most this", min=0, max=1, strict=True),
        "window_points": Param(float, "report only: the accuracy window is within this many points of SGD", min=0),
    }

    def validate(self, config: Mapping[str, Any]) -> None:
        """n_rho >= 2; rho_min <= stable_rho < rho_max; the eigenvalue images fit in subset; models distinct."""
        if config["n_rho"] < 2:
            raise ConfigError(
                f"n_rho must be >= 2 (E7.4 needs a top of the grid above ρ ≤ stable_rho), got {config['n_rho']}"
            )
        if not config["rho_min"] <= config["stable_rho"] < config["rho_max"]:
            raise ConfigError(
                f"stable_rho must lie in [rho_min, rho_max) = [{config['rho_min']:g}, {config['rho_max']:g}) "
                f"(E7.2 needs grid points at ρ <= stable_rho, E7.4 a top above it), got {config['stable_rho']:g}"
            )
        n = config["sharpness_batches"] * config["sharpness_batch_size"]
        if n > config["subset"]:
            raise ConfigError(
                f"sharpness_batches × sharpness_batch_size = {n} must be <= subset = {config['subset']} (the "
                "eigenvalue is measured on training images)"
            )
        if len(set(config["models"])) != len(config["models"]):
            raise ConfigError(f"models must be distinct, got {config['models']}")

    def missing(self, config: Mapping[str, Any]) -> str | None:
        """The dataset's problem (not installed, corrupt) before any unit starts, or ``None``."""
        try:
            _data(config["dataset"])
        except ConfigError as err:
            return str(err)
        return None

    # -- units ---------------------------------------------------------------------------------------------------
    def units(self, config: Mapping[str, Any]) -> list[Unit]:
        base = {k: config[k] for k in _TRAIN_KEYS}
        rhos = logspace(config["rho_min"], config["rho_max"], config["n_rho"])
        runs: dict[tuple, None] = {}
        for model in config["models"]:
            for s in [*config["seeds"], *config["reference_seeds"]]:
                runs[(model, "sgd", config["lr"], 0.0, s)] = None
            for m in METHODS:
                for rho in rhos:
                    for s in config["seeds"]:
                        runs[(model, m, config["lr"], rho, s)] = None
            for lr in config["lr_sweep"]:
                for s in config["lr_sweep_seeds"]:
                    runs[(model, "sgd", lr, 0.0, s)] = None
                    for m in METHODS:
                        runs[(model, m, lr, config["lr_sweep_rho"], s)] = None
        # the Hessian spectrum (report only) of SGD and of SAM / USAM at the grid ρ nearest density_rho, first seed
        d_rho = min(rhos, key=lambda r: abs(math.log(r / config["density_rho"])))
        spectrum = {
            (m, config["lr"], r, config["seeds"][0]) for m, r in (("sgd", 0.0), ("sam", d_rho), ("usam", d_rho))
        }
        out = []
        for model, m, lr, rho, s in runs:
            p = {**base, "model": model, "optimizer": m, "lr": lr, "rho": rho, "seed": s}
            if (m, lr, rho, s) in spectrum:
                p["density"] = {"probes": config["density_probes"], "steps": config["density_steps"]}
            out.append(Unit(f"{model}-{m}-lr{lr:g}-r{rho:g}-s{s}", p))
        return out

    def run_unit(self, params: Mapping[str, Any]) -> dict[str, Any]:
        from samkit.models import build_model
        from samkit.train import TrainConfig, train

        train_ds, test_ds = _data(params["dataset"])
        cfg = TrainConfig(
            dataset=params["dataset"],
            model=params["model"],
            optimizer=params["optimizer"],
            rho=params["rho"],
            lr=params["lr"],
            momentum=params["momentum"],
            weight_decay=params["weight_decay"],
            batch_size=params["batch_size"],
            epochs=params["epochs"],
            schedule=params["schedule"],
            decay_frac=params["decay_frac"],
            seed=params["seed"],
            subset=params["subset"],
            test_subset=min(_EPOCH_TEST_IMAGES, params["test_subset"]),
            sharpness_every=params["epochs"],
            sharpness_batches=params["sharpness_batches"],
            sharpness_batch_size=params["sharpness_batch_size"],
            sharpness_iters=params["sharpness_iters"],
            threads=0,
            device=params["device"],
            progress=False,
            quiet=True,
            out=None,
        )
        s = train(cfg, data=(train_ds, test_ds))
        hist = s["history"]
        diverged = s["status"] == "diverged"
        test_loss = test_acc = spectrum = None
        if not diverged:
            test = test_ds.subset(params["test_subset"])
            c, h, _ = test.shape
            model = build_model(params["model"], in_channels=c, image_size=h, num_classes=test.num_classes)
            model.load_state_dict(s["params"])
            test_loss, test_acc = _evaluate(model, test)
            if params.get("density"):
                spectrum = _spectrum(model, train_ds.subset(params["subset"]), params)
        return {
            "spectrum": spectrum,
            "status": s["status"],
            "diverged": diverged,
            "diverged_epoch": s["diverged_epoch"],
            "test_acc": test_acc,
            "test_loss": test_loss,
            "train_loss": s["final_train_loss"],
            "top_eigenvalue": s["final_top_eigenvalue"],
            "epochs": [r["epoch"] for r in hist],
            "curve_lr": [r.get("lr") for r in hist],
            "curve_train_loss": [r.get("train_loss") for r in hist],
            "curve_train_acc": [r.get("train_acc") for r in hist],
            "curve_grad_norm": [r.get("grad_norm") for r in hist],
            "curve_eps_norm": [r.get("eps_norm") for r in hist],
        }

    def tables(self, config: Mapping[str, Any], results: Mapping[str, Mapping[str, Any]]) -> dict[str, list[dict]]:
        runs: list[dict] = []
        curves: list[dict] = []
        spectrum: list[dict] = []
        for unit in self.units(config):
            r, p = results[unit.key], unit.params
            key = {"model": p["model"], "method": p["optimizer"], "lr": p["lr"], "rho": p["rho"], "seed": p["seed"]}
            runs.append(
                {
                    **key,
                    "diverged": bool(r["diverged"]),
                    "diverged_epoch": r["diverged_epoch"] if r["diverged_epoch"] is not None else "",
                    "test_acc": _num(r["test_acc"]),
                    "test_loss": _num(r["test_loss"]),
                    "train_loss": _num(r["train_loss"]),
                    "top_eigenvalue": _num(r["top_eigenvalue"]),
                }
            )
            for i, ep in enumerate(r["epochs"]):
                curves.append(
                    {
                        **key,
                        "epoch": ep,
                        "lr_end": _num(r["curve_lr"][i]),
                        "train_loss": _num(r["curve_train_loss"][i]),
                        "train_acc": _num(r["curve_train_acc"][i]),
                        "grad_norm": _num(r["curve_grad_norm"][i]),
                        "eps_norm": _num(r["curve_eps_norm"][i]),
                    }
                )
            for i, (nodes, weights) in enumerate(r.get("spectrum") or []):
                spectrum.extend({**key, "probe": i, "node": _num(x), "weight": _num(w)} for x, w in zip(nodes, weights))
        data = {"runs": Table(runs), "curves": Table(curves)}
        return {"runs": runs, "curves": curves, "summary": self._summary_rows(config, data), "spectrum": spectrum}

    def _summary_rows(self, config: Mapping[str, Any], data: Mapping[str, Table]) -> list[dict]:
        """Per model and (method, ρ) of the grid: seeds, failures, medians (what the claims use, for reading)."""
        rows = []
        for model in config["models"]:
            a = _analyse(config, data, model)
            rows.append(
                {
                    "model": model,
                    "method": "sgd",
                    "rho": 0.0,
                    "seeds": len(data["runs"].where(model=model, method="sgd", lr=float(config["lr"]))),
                    "acc_mean": a.sgd_acc,
                    "train_loss": a.sgd_loss,
                    "top_eigenvalue": a.sgd_lam,
                }
            )
            for method in METHODS:
                for p in a.points[method]:
                    rows.append(
                        {
                            "model": model,
                            "method": method,
                            "rho": p.rho,
                            "seeds": len(p.acc),
                            "diverged": int(p.diverged.sum()),
                            "failed": int(p.failed.sum()),
                            "trains": p.trains,
                            "acc_mean": float(np.nanmean(p.acc)) if np.isfinite(p.acc).any() else float("nan"),
                            "acc_min": float(np.nanmin(p.acc)) if np.isfinite(p.acc).any() else float("nan"),
                            "train_loss": p.loss,
                            "top_eigenvalue": p.lam,
                            "lam_over_sgd": p.lam / a.sgd_lam if a.sgd_ok else float("nan"),
                            "eps_last": p.eps_last,
                            "eps_mean": p.eps_mean,
                            "eps_dynamic_range": p.eps_dyn,
                        }
                    )
        return rows

    # -- claims ---------------------------------------------------------------------------------------------------
    def _setting(self, config: Mapping[str, Any], model: str) -> str:
        return (
            f"{model} on the first {config['subset']} {config['dataset']} training images (test: {config['test_subset']}"
            f"), batch {config['batch_size']}, {config['epochs']} epochs, SGD lr {config['lr']:g} ({config['schedule']}"
            + (f", last {config['decay_frac']:g} of the steps to 0" if config["schedule"] == "decay" else "")
            + f"), momentum {config['momentum']:g}, wd {config['weight_decay']:g}; ρ ∈ [{fmt(config['rho_min'])}, "
            f"{fmt(config['rho_max'])}] ({config['n_rho']} log-spaced); seeds {config['seeds']}"
        )

    def claims(self, config: Mapping[str, Any], data: Mapping[str, Table]) -> list[Claim]:
        out: list[Claim] = []
        for model in config["models"]:
            out += self._model_claims(config, data, _analyse(config, data, model))
        return out

    def _model_claims(self, config: Mapping[str, Any], data: Mapping[str, Table], a: _Model) -> list[Claim]:
        model, drop = a.model, float(config["collapse_drop"])
        setting = self._setting(config, model)
        trains = (
            f"trains = every seed finite with test accuracy ≥ SGD's {a.sgd_acc:.1f}% − {drop:g} points"
            if a.sgd_ok
            else f"trains = every seed finite ({a.sgd_note}: no accuracy reference)"
        )

        def claim(
            k: int,
            statement: str,
            prediction: str,
            measured: str,
            tolerance: str,
            passed: bool,
            why: Sequence[str],
            figure: str,
            values: dict,
        ) -> Claim:
            if why:
                measured += f" — not exercised: {'; '.join(why)}"
            return Claim(
                id=f"E7.{k}-{model}",
                statement=statement,
                setting=setting,
                prediction=prediction,
                measured=measured,
                tolerance=tolerance,
                passed=bool(passed) and not why,
                exercised=not why,
                figure=figure,
                data=["data/runs.csv", "data/curves.csv"],
                values=values,
            )

        # E7.0: the precondition
        top_u = a.top_trained("usam")
        dyn = top_u.eps_dyn if top_u is not None else float("nan")
        need = float(config["min_dynamic_range"])
        why0 = [] if a.sgd_ok else [a.sgd_note]
        if top_u is None:
            why0.append("USAM trains at no ρ of the grid")
            m0 = "USAM trains at no ρ of the grid"
        else:
            m0 = (
                f"at USAM's largest training ρ = {fmt(top_u.rho)}: epoch-mean ‖ε‖ max/min = {dyn:.1f} (median over "
                f"seeds); SGD's ‖g‖ {self._g_span(data, config, model)}"
            )
            if not dyn >= need:
                why0.append(f"USAM's ‖ε‖ = ρ‖g‖ varies only {dyn:.1f}× (< {need:g}×): ‖g‖ does not decay enough")
        out = [
            claim(
                0,
                "Precondition: the mechanism is put to work — ‖g‖ decays during training, so USAM's "
                "perturbation ρ‖g‖ is large early and small late (SAM's stays ρ).",
                f"USAM's epoch-mean ‖ε‖ max/min ≥ {need:g} at its largest training ρ",
                m0,
                f"{trains}; PASS or NOT EXERCISED (then E7.1–E7.4 of {model} are NOT EXERCISED too)",
                bool(dyn >= need),
                why0,
                "norms.png",
                {"dynamic_range": dyn, "rho": top_u.rho if top_u else float("nan")},
            )
        ]
        why = list(why0)

        # E7.1: r_max ratio
        ratio_need = float(config["min_rmax_ratio"])
        r = {m: a.r_max(m) for m in METHODS}
        ratio = r["sam"] / r["usam"] if r["usam"] > 0 else float("nan")
        tops = {m: a.top_trained(m) for m in METHODS}
        m1 = "; ".join(
            f"{m.upper()}: r_max = {fmt(r[m])} (trains up to ρ = {fmt(tops[m].rho)})"
            if tops[m] is not None
            else f"{m.upper()} trains at no ρ"
            for m in METHODS
        )
        out.append(
            claim(
                1,
                "SAM tolerates a far larger realised late-training perturbation than USAM (robustness to ρ, in "
                "its scale-free form).",
                f"r_max(SAM) / r_max(USAM) ≥ {ratio_need:g}",
                f"{m1}; ratio = {fmt(ratio)}",
                f"r_max = the largest median (over seeds) last-epoch mean ‖ε‖ over the ρ at which the method "
                f"trains; {trains}",
                bool(ratio >= ratio_need),
                why,
                "perturbation.png",
                {"r_max_sam": r["sam"], "r_max_usam": r["usam"], "ratio": ratio},
            )
        )

        # E7.2: divergence at ρ <= stable_rho
        cap = float(config["stable_rho"]) * (1 + 1e-9)
        low = {m: [p for p in a.points.get(m, []) if p.rho <= cap] for m in METHODS}
        n = {m: sum(len(p.acc) for p in low[m]) for m in METHODS}
        sam_div = sum(int(p.diverged.sum()) for p in low["sam"])
        usam_div = sum(int(p.diverged.sum()) for p in low["usam"])
        usam_fail = sum(int(p.failed.sum()) for p in low["usam"])
        first = next((p.rho for p in low["usam"] if p.failed.any()), None)
        out.append(
            claim(
                2,
                f"SAM does not diverge at ρ ≤ {config['stable_rho']:g}; USAM does, or collapses, somewhere there.",
                f"SAM: 0 diverged runs at ρ ≤ {config['stable_rho']:g}; USAM: ≥ 1 diverged or collapsed run there",
                f"SAM: {sam_div}/{n['sam']} diverged (and {sum(int(p.failed.sum()) for p in low['sam'])} failed); "
                f"USAM: {usam_fail}/{n['usam']} failed ({usam_div} diverged)"
                + (f", first at ρ = {fmt(first)}" if first is not None else ""),
                f"diverged = a non-finite loss or gradient; {trains}",
                n["sam"] > 0 and sam_div == 0 and usam_fail > 0,
                why,
                "accuracy_vs_rho.png",
                {"sam_diverged": sam_div, "usam_failed": usam_fail, "runs_sam": n["sam"], "runs_usam": n["usam"]},
            )
        )

        # E7.3: flatter at matched training loss
        match, flat = float(config["loss_match"]), float(config["flat_ratio"])
        best: dict[str, tuple[float, float] | None] = {}
        for m in METHODS:
            cands = [
                (p.lam / a.sgd_lam, p.rho)
                for p in a.trained(m)
                if a.sgd_ok and p.loss <= match * a.sgd_loss and math.isfinite(p.lam)
            ]
            best[m] = min(cands) if cands else None
        m3 = "; ".join(
            f"{m.upper()}: min λ/λ_SGD = {best[m][0]:.2f} (ρ = {fmt(best[m][1])})"
            if best[m] is not None
            else f"{m.upper()}: no training ρ at matched loss"
            for m in METHODS
        )
        m3 += f"; SGD: λ = {fmt(a.sgd_lam)}, train loss {fmt(a.sgd_loss)}"
        ok3 = best["sam"] is not None and best["usam"] is not None and best["sam"][0] <= flat and best["usam"][0] > flat
        out.append(
            claim(
                3,
                "At matched training loss SAM ends flatter than SGD; USAM does not.",
                f"min λ/λ_SGD ≤ {flat:g} for SAM and > {flat:g} for USAM, over the ρ at which the method trains "
                f"with a final training loss ≤ {match:g} × SGD's",
                m3,
                f"λ = top Hessian eigenvalue at the end (Lanczos, {config['sharpness_batches']} × "
                f"{config['sharpness_batch_size']} training images), medians over seeds (SGD's over "
                f"{len(set(config['seeds']) | set(config['reference_seeds']))} seeds); {trains}",
                ok3,
                why,
                "sharpness.png",
                {f"min_lam_ratio_{m}": (best[m][0] if best[m] else float("nan")) for m in METHODS},
            )
        )

        # E7.4: both fail at the top of the grid
        top = float(config["rho_max"])
        at_top = {
            m: next((p for p in a.points.get(m, []) if math.isclose(p.rho, top, rel_tol=1e-6)), None) for m in METHODS
        }
        m4 = "; ".join(
            f"{m.upper()}: {int(p.failed.sum())}/{len(p.failed)} seeds failed ({int(p.diverged.sum())} diverged)"
            if p is not None
            else f"{m.upper()}: no run at ρ = {fmt(top)}"
            for m, p in at_top.items()
        )
        out.append(
            claim(
                4,
                f"Both methods fail at the top of the grid (ρ = {fmt(top)}): the grid reaches past both windows.",
                "every seed of SAM and of USAM diverges or collapses",
                m4,
                trains,
                all(p is not None and len(p.failed) and p.failed.all() for p in at_top.values()),
                why,
                "accuracy_vs_rho.png",
                {},
            )
        )
        return out

    @staticmethod
    def _g_span(data: Mapping[str, Table], config: Mapping[str, Any], model: str) -> str:
        """SGD's epoch-mean ‖g‖ in its first and last epoch (median over seeds), as text."""
        c = _run_curves(data["curves"])
        runs = [v for k, v in c.items() if k[0] == model and k[1] == "sgd" and math.isclose(k[2], config["lr"])]
        if not runs:
            return "not recorded"
        first = float(np.median([v["grad_norm"][0] for v in runs]))
        last = float(np.median([v["grad_norm"][-1] for v in runs]))
        return f"{fmt(first)} → {fmt(last)} (first → last epoch, {first / last:.0f}×)"

    # -- figures --------------------------------------------------------------------------------------------------
    def figures(self, config: Mapping[str, Any], data: Mapping[str, Table], fig_dir: Path) -> list[Figure]:
        models = list(config["models"])
        an = {m: _analyse(config, data, m) for m in models}
        setting = "; ".join(self._setting(config, m) for m in models[:1]) + (
            f" (and the same for {', '.join(models[1:])})" if len(models) > 1 else ""
        )
        drop, wp = float(config["collapse_drop"]), float(config["window_points"])
        ids = lambda *k: [f"E7.{i}-{m}" for m in models for i in k]  # noqa: E731
        figs = [
            Figure(
                self._fig_accuracy(an, config, fig_dir),
                "Test accuracy against ρ",
                "Final test accuracy (mean ± std over seeds; a diverged seed counts as 10%, chance) of SAM and USAM "
                f"against ρ, one panel per model. Grey line: SGD (mean over seeds); dotted: SGD − {drop:g} points, "
                "the 'trains' threshold. Crosses: at least one seed diverged. Windows in raw ρ (report only; not "
                "scale-free: as ρ → 0 both methods are SGD, so a window reaching the grid's smallest ρ has the grid's "
                "lower edge, and ‖g‖ rescales USAM's ρ) — " + self._windows_text(an, wp) + f". {setting}.",
                ids(2, 4),
                ["data/runs.csv", "data/summary.csv"],
            ),
            Figure(
                self._fig_perturbation(an, config, fig_dir),
                "Realised perturbation: what E7.1 compares",
                "Left: median last-epoch ‖ε‖ against ρ (filled: the method trains at that ρ; open: some seed "
                "failed); the dashed lines mark r_max, the largest of the filled points. SAM's ‖ε‖ is ρ; USAM's is "
                "ρ‖g‖, tiny once ‖g‖ has decayed. Right: test accuracy of each finite run against its realised mean "
                "‖ε‖ over training, the fair comparison (lines join the per-ρ means). " + self._rmax_text(an),
                ids(1),
                ["data/curves.csv", "data/runs.csv"],
            ),
            Figure(
                self._fig_norms(an, config, data, fig_dir),
                "‖g‖ and ‖ε‖ over training",
                "Left: epoch-mean mini-batch ‖g‖ of SGD, SAM and USAM at USAM's largest training ρ (first seed). "
                "Right: epoch-mean ‖ε‖ of USAM at every ρ where it did not diverge (first seed; colour = ρ) and "
                "of SAM at USAM's largest training ρ (dashed). The lr decays to 0 over the last "
                f"{config['decay_frac']:g} of the epochs (shaded). " + self._dyn_text(an),
                ids(0),
                ["data/curves.csv"],
            ),
            Figure(
                self._fig_sharpness(an, config, fig_dir),
                "Sharpness at matched training loss",
                "Final top Hessian eigenvalue relative to SGD's against the final training loss relative to SGD's, "
                "one point per ρ at which the method trains (medians over seeds; labels: ρ). E7.3 uses the points "
                f"left of the dotted line (loss ≤ {config['loss_match']:g} × SGD's); dashed: "
                f"λ/λ_SGD = {config['flat_ratio']:g}.",
                ids(3),
                ["data/runs.csv", "data/summary.csv"],
            ),
            Figure(
                self._fig_spectrum(config, data, fig_dir),
                "Hessian spectrum at the end (report only)",
                "Eigenvalue density of the training loss's Hessian of the final SGD, SAM and USAM models (first seed; "
                "SAM and USAM at the grid ρ nearest " + f"{config['density_rho']:g}" + "), by stochastic Lanczos "
                f"quadrature ({config['density_probes']} probes × {config['density_steps']} steps, "
                "samkit.sharpness.spectral_density) on the eigenvalue-measurement images; Gaussian-smoothed, log "
                "density scale. A diverged run has no spectrum. " + self._spectrum_text(data),
                [],
                ["data/spectrum.csv"],
            ),
            Figure(
                self._fig_lr(config, data, fig_dir),
                "Learning-rate sweep (report only)",
                f"Final test accuracy against the learning rate at ρ = {config['lr_sweep_rho']:g} (seeds "
                f"{config['lr_sweep_seeds']}), SGD at the same learning rates; crosses: diverged (drawn at 10%). "
                + self._lr_text(config, data),
                [],
                ["data/runs.csv"],
            ),
        ]
        return figs

    @staticmethod
    def _windows_text(an: Mapping[str, _Model], wp: float) -> str:
        parts = []
        for model, a in an.items():
            floor = a.sgd_acc - wp
            for m in METHODS:
                pts = a.points.get(m, [])
                near = _window(pts, lambda p, floor=floor: p.trains and np.nanmean(p.acc) >= floor)
                parts.append(
                    f"{model} {m.upper()}: trains at {_window(pts, lambda p: p.trains)}, within {wp:g} point "
                    f"of SGD at {near}"
                )
        return "; ".join(parts)

    @staticmethod
    def _rmax_text(an: Mapping[str, _Model]) -> str:
        return (
            "; ".join(
                f"{model}: r_max SAM {fmt(a.r_max('sam'))}, USAM {fmt(a.r_max('usam'))}" for model, a in an.items()
            )
            + "."
        )

    @staticmethod
    def _dyn_text(an: Mapping[str, _Model]) -> str:
        parts = []
        for model, a in an.items():
            top = a.top_trained("usam")
            parts.append(
                f"{model}: USAM's ‖ε‖ max/min = {top.eps_dyn:.1f} at ρ = {fmt(top.rho)}"
                if top is not None
                else f"{model}: USAM trains at no ρ"
            )
        return "; ".join(parts) + "."

    @staticmethod
    def _lr_text(config: Mapping[str, Any], data: Mapping[str, Table]) -> str:
        parts = []
        runs = data["runs"]
        for model in config["models"]:
            for m in ("sgd", *METHODS):
                rho = 0.0 if m == "sgd" else float(config["lr_sweep_rho"])
                bits = []
                for lr in sorted({float(x) for x in config["lr_sweep"]}):
                    s = runs.where(model=model, method=m, lr=lr, rho=rho)
                    s = Table([r for r in s.rows if int(r["seed"]) in config["lr_sweep_seeds"]])
                    if not len(s):
                        continue
                    div = s.col("diverged").astype(bool)
                    acc = 100.0 * s.col("test_acc")
                    txt = f"{int(div.sum())}/{len(s)} diverged" if div.any() else f"{np.mean(acc):.1f}%"
                    bits.append(f"lr {lr:g}: {txt}")
                parts.append(f"{model} {m.upper()}: " + ", ".join(bits))
        return "; ".join(parts) + "."

    # the figure helpers ----------------------------------------------------------------------------------------------
    @staticmethod
    def _fig_accuracy(an: Mapping[str, _Model], config: Mapping[str, Any], fig_dir: Path) -> str:
        fig, axes = new_figure(len(an), 1, width=5.4, height=4.0)
        drop = float(config["collapse_drop"])
        for ax, (model, a) in zip(axes[0], an.items()):
            any_div = False
            for m in METHODS:
                pts = a.points.get(m, [])
                if not pts:
                    continue
                rho = np.array([p.rho for p in pts])
                acc = [np.where(p.diverged, 10.0, np.nan_to_num(p.acc, nan=10.0)) for p in pts]
                mean = np.array([x.mean() for x in acc])
                std = np.array([x.std() for x in acc])
                div = np.array([bool(p.diverged.any()) for p in pts])
                st = METHOD_STYLE[m]
                ax.errorbar(rho, mean, yerr=std, color=st["color"], marker="o", ms=4, capsize=3, label=method_label(m))
                if div.any():
                    any_div = True
                    ax.scatter(rho[div], mean[div], marker="x", s=80, color=st["color"], zorder=5)
            if a.sgd_ok:
                ax.axhline(a.sgd_acc, color=METHOD_STYLE["gd"]["color"], lw=1.2, label=f"SGD ({a.sgd_acc:.1f}%)")
                ax.axhline(
                    a.sgd_acc - drop, color=METHOD_STYLE["gd"]["color"], lw=1, ls=":", label=f"SGD − {drop:g} points"
                )
            _accuracy_axes(
                ax,
                "a seed diverged" if any_div else "",
                "perturbation radius ρ",
                f"{model}, lr = {config['lr']:g}, {len(config['seeds'])} seed(s)",
            )
        return save_figure(fig, fig_dir / "accuracy_vs_rho.png")

    @staticmethod
    def _fig_perturbation(an: Mapping[str, _Model], config: Mapping[str, Any], fig_dir: Path) -> str:
        fig, axes = new_figure(2, len(an), width=5.0, height=3.9)
        for row, (model, a) in enumerate(an.items()):
            left, right = axes[row, 0], axes[row, 1]
            for m in METHODS:
                st = METHOD_STYLE[m]
                pts = [p for p in a.points.get(m, []) if math.isfinite(p.eps_last) and p.eps_last > 0]
                tr = [p for p in pts if p.trains]
                nt = [p for p in pts if not p.trains]
                left.plot([p.rho for p in pts], [p.eps_last for p in pts], color=st["color"], lw=1, alpha=0.6)
                if tr:
                    left.scatter(
                        [p.rho for p in tr],
                        [p.eps_last for p in tr],
                        color=st["color"],
                        s=30,
                        label=f"{method_label(m)}: trains",
                    )
                if nt:
                    left.scatter(
                        [p.rho for p in nt],
                        [p.eps_last for p in nt],
                        facecolors="none",
                        edgecolors=st["color"],
                        s=30,
                        label=f"{method_label(m)}: a seed failed",
                    )
                rmax = a.r_max(m)
                if math.isfinite(rmax):
                    left.axhline(rmax, color=st["color"], ls="--", lw=1, label=f"r_max {m.upper()} = {fmt(rmax)}")
                # right: every finite run, accuracy against its mean ‖ε‖ over training
                xs, ys, mx, my = [], [], [], []
                for p in pts:
                    fin = np.isfinite(p.acc)
                    if fin.any() and math.isfinite(p.eps_mean):
                        xs += [p.eps_mean] * int(fin.sum())
                        ys += list(p.acc[fin])
                        mx.append(p.eps_mean)
                        my.append(float(np.mean(p.acc[fin])))
                if xs:
                    right.scatter(xs, ys, color=st["color"], s=14, alpha=0.7)
                    right.plot(mx, my, color=st["color"], lw=1.2, marker="o", ms=3, label=method_label(m))
            if a.sgd_ok:
                right.axhline(a.sgd_acc, color=METHOD_STYLE["gd"]["color"], lw=1, label="SGD")
            for ax in (left, right):
                ax.set_xscale("log")
                ax.legend(fontsize=7)
            left.set_yscale("log")
            left.set_xlabel("perturbation radius ρ")
            left.set_ylabel("last-epoch mean ‖ε‖ (median over seeds)")
            left.set_title(f"{model}: realised late perturbation")
            right.set_xlabel("mean ‖ε‖ over training (per run)")
            right.set_ylabel("test accuracy (%)")
            right.set_title(f"{model}: accuracy against the realised ‖ε‖")
        return save_figure(fig, fig_dir / "perturbation.png")

    @staticmethod
    def _fig_norms(
        an: Mapping[str, _Model], config: Mapping[str, Any], data: Mapping[str, Table], fig_dir: Path
    ) -> str:
        curves = _run_curves(data["curves"])
        lr, seed0 = float(config["lr"]), int(config["seeds"][0])
        fig, axes = new_figure(2, len(an), width=5.0, height=3.8)
        for row, (model, a) in enumerate(an.items()):
            left, right = axes[row, 0], axes[row, 1]
            top = a.top_trained("usam")
            rho_u = top.rho if top is not None else None
            for m, rho in (("sgd", 0.0), ("sam", rho_u), ("usam", rho_u)):
                c = curves.get((model, m, lr, rho, seed0)) if rho is not None else None
                if c is None:
                    continue
                lab = "SGD" if m == "sgd" else f"{method_label(m)}, ρ = {rho:.2g}"
                left.plot(c["epoch"], c["grad_norm"], color=METHOD_STYLE["gd" if m == "sgd" else m]["color"], label=lab)
            finite = {
                float(r["rho"])
                for r in data["runs"].where(model=model, method="usam", lr=lr, seed=seed0).rows
                if not r["diverged"]
            }
            pts = [p for p in a.points.get("usam", []) if p.rho in finite]  # the first seed's finite runs
            cmap = plt.get_cmap("Reds")
            for i, p in enumerate(pts):
                c = curves.get((model, "usam", lr, p.rho, seed0))
                if c is None:
                    continue
                color = cmap(0.35 + 0.65 * i / max(1, len(pts) - 1))
                right.plot(c["epoch"], c["eps_norm"], color=color, lw=1.2, label=f"USAM ρ = {p.rho:.2g}")
            c = curves.get((model, "sam", lr, rho_u, seed0)) if rho_u is not None else None
            if c is not None:
                right.plot(
                    c["epoch"], c["eps_norm"], color=METHOD_STYLE["sam"]["color"], ls="--", label=f"SAM ρ = {rho_u:.2g}"
                )
            e = float(config["epochs"])
            for ax in (left, right):
                if config["schedule"] == "decay":
                    ax.axvspan(e * (1 - float(config["decay_frac"])), e, color="#eeeeee", zorder=0)
                ax.set_yscale("log")
                ax.set_xlabel("epoch")
                ax.legend(fontsize=7, ncol=2 if ax is right else 1)
            left.set_ylabel("epoch-mean mini-batch ‖g‖")
            left.set_title(f"{model}: gradient norm")
            right.set_ylabel("epoch-mean ‖ε‖")
            right.set_title(f"{model}: perturbation length")
        return save_figure(fig, fig_dir / "norms.png")

    @staticmethod
    def _fig_sharpness(an: Mapping[str, _Model], config: Mapping[str, Any], fig_dir: Path) -> str:
        fig, axes = new_figure(len(an), 1, width=5.4, height=4.0)
        for ax, (model, a) in zip(axes[0], an.items()):
            drawn = False
            if a.sgd_ok:
                for m in METHODS:
                    pts = [p for p in a.trained(m) if math.isfinite(p.lam) and p.loss > 0]
                    if not pts:
                        continue
                    x = [p.loss / a.sgd_loss for p in pts]
                    y = [p.lam / a.sgd_lam for p in pts]
                    ax.scatter(x, y, color=METHOD_STYLE[m]["color"], s=28, label=method_label(m))
                    for xi, yi, p in zip(x, y, pts):
                        ax.annotate(
                            f"{p.rho:.2g}",
                            (xi, yi),
                            xytext=(4, 3),
                            textcoords="offset points",
                            fontsize=7,
                            color=METHOD_STYLE[m]["color"],
                        )
                    drawn = True
            if drawn:
                ax.axvline(float(config["loss_match"]), color="k", ls=":", lw=1, label="matched-loss limit")
                ax.axhline(float(config["flat_ratio"]), color="k", ls="--", lw=1, label="flatness threshold")
                ax.scatter([1.0], [1.0], marker="*", s=120, color=METHOD_STYLE["gd"]["color"], zorder=5, label="SGD")
                ax.set_xscale("log")
                # ratios on a log axis: 0.5 and 2 are equally far from SGD, and one sharp outlier cannot squash the rest
                ax.set_yscale("log")
                ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
                ax.yaxis.set_minor_formatter(FormatStrFormatter("%g"))
                ax.legend(fontsize=7)
            ax.set_xlabel("final training loss / SGD's")
            ax.set_ylabel("final λmax / SGD's")
            ax.set_title(f"{model}: sharpness at the end" + ("" if a.sgd_ok else f" ({a.sgd_note})"))
        return save_figure(fig, fig_dir / "sharpness.png")

    @staticmethod
    def _spectrum_text(data: Mapping[str, Table]) -> str:
        t = data.get("spectrum")
        if t is None or not len(t):
            return "No spectrum was measured."
        parts = []
        for model in t.unique("model"):
            for m in ("sgd", *METHODS):
                r = t.where(model=model, method=m)
                if len(r):
                    top = float(np.max(r.col("node")))
                    parts.append(f"{model} {method_label(m) if m != 'sgd' else 'SGD'}: largest node {top:.3g}")
        return "; ".join(parts) + "."

    @staticmethod
    def _fig_spectrum(config: Mapping[str, Any], data: Mapping[str, Table], fig_dir: Path) -> str:
        t = data.get("spectrum", Table([]))
        models = list(config["models"])
        fig, axes = new_figure(len(models), 1, width=5.4, height=3.8)
        for ax, model in zip(axes[0], models):
            mine = t.where(model=model) if len(t) else t
            if not len(mine):
                ax.text(0.5, 0.5, "no spectrum (runs diverged or not measured)", ha="center", transform=ax.transAxes)
            else:
                nodes_all = mine.col("node")
                lo, hi = float(nodes_all.min()), float(nodes_all.max())
                sigma = 0.01 * (hi - lo) if hi > lo else 1.0
                grid = np.linspace(lo - 6 * sigma, hi + 6 * sigma, 800)
                for m in ("sgd", *METHODS):
                    r = mine.where(method=m)
                    if not len(r):
                        continue
                    x, w = r.col("node"), r.col("weight")
                    n_probes = len(set(r.col("probe").tolist()))
                    dens = (w[None, :] * np.exp(-0.5 * ((grid[:, None] - x[None, :]) / sigma) ** 2)).sum(1)
                    dens /= n_probes * sigma * math.sqrt(2 * math.pi)
                    rho = float(r.first("rho"))
                    label = "SGD" if m == "sgd" else f"{method_label(m)}, ρ = {rho:.2g}"
                    style = METHOD_STYLE["gd" if m == "sgd" else m]
                    ax.plot(grid, np.maximum(dens, 1e-8), color=style["color"], lw=1.3, label=label,
                            ls="--" if m == "sgd" else "-")  # fmt: skip
                ax.set_yscale("log")
                ax.set_ylim(1e-6, None)
                ax.legend(fontsize=7)
            ax.set_xlabel("Hessian eigenvalue")
            ax.set_ylabel("density (smoothed)")
            ax.set_title(f"{model}: Hessian spectrum at the end")
        return save_figure(fig, fig_dir / "spectrum.png")

    @staticmethod
    def _fig_lr(config: Mapping[str, Any], data: Mapping[str, Table], fig_dir: Path) -> str:
        runs = data["runs"]
        models = list(config["models"])
        fig, axes = new_figure(len(models), 1, width=5.0, height=3.8)
        lrs = sorted({float(x) for x in config["lr_sweep"]})
        for ax, model in zip(axes[0], models):
            any_div = False
            for m in ("sgd", *METHODS):
                rho = 0.0 if m == "sgd" else float(config["lr_sweep_rho"])
                xs, mean, div = [], [], []
                for lr in lrs:
                    s = runs.where(model=model, method=m, lr=lr, rho=rho)
                    s = Table([r for r in s.rows if int(r["seed"]) in config["lr_sweep_seeds"]])
                    if not len(s):
                        continue
                    d = s.col("diverged").astype(bool)
                    acc = np.where(d, 10.0, np.nan_to_num(100.0 * s.col("test_acc"), nan=10.0))
                    xs.append(lr)
                    mean.append(float(acc.mean()))
                    div.append(bool(d.any()))
                if not xs:
                    continue
                color = METHOD_STYLE["gd" if m == "sgd" else m]["color"]
                label = "SGD" if m == "sgd" else f"{method_label(m)}, ρ = {config['lr_sweep_rho']:g}"
                ax.plot(xs, mean, color=color, marker="o", ms=4, ls="--" if m == "sgd" else "-", label=label)
                dx = [x for x, d in zip(xs, div) if d]
                if dx:
                    any_div = True
                    ax.scatter(dx, [y for y, d in zip(mean, div) if d], marker="x", s=80, color=color, zorder=5)
            _accuracy_axes(ax, "diverged" if any_div else "", "learning rate η", f"{model}: learning-rate sweep")
            ax.set_xticks(lrs, [f"{x:g}" for x in lrs])
            ax.minorticks_off()
        return save_figure(fig, fig_dir / "lr_sweep.png")
