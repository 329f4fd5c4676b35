"""E7's configuration: the presets, the schema of every key, the rules between keys, and the ρ grid (computed here
once; units, tables, claims and figures all use its index)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from samkit.data import DATASETS
from samkit.experiments._common import grid_keys, logspace, seed_text
from samkit.experiments.base import ConfigError, Param, Scope, fmt
from samkit.models import DESCRIPTIONS, MODELS
from samkit.train import SCHEDULES

#: The methods compared with SGD.
METHODS = ("sam", "usam")
#: Config keys that every training run receives unchanged.
TRAIN_KEYS = (
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


def rho_grid(config: Mapping[str, Any]) -> list[float]:
    """The ρ grid: ``n_rho`` log-spaced values from ``rho_min`` to ``rho_max`` (6 significant digits). Every run
    of the grid records its index in this list (``rho_index`` in ``runs.csv``), and the claims and figures find
    runs by that index, never by matching ρ values.

    >>> rho_grid({"rho_min": 0.001, "rho_max": 3.16228, "n_rho": 8})[-2:]
    [1.0, 3.16228]
    """
    return logspace(config["rho_min"], config["rho_max"], config["n_rho"])


def preset(**kw: Any) -> dict[str, Any]:
    """The quick preset's values, with ``kw`` changed."""
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
        "rho_min": 0.01,
        "rho_max": 3.16228,
        "n_rho": 6,
        "seeds": list(range(14)),
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
        "min_grid_steps": 1.0,
        "stable_rho": 1.0,
        "loss_match": 2.0,
        "eps_at_work": 1.0,
        "flat_ratio": 0.75,
        "window_points": 1.0,
    }
    base.update(kw)
    return base


PRESETS = {
    "tiny": preset(
        subset=150,
        test_subset=2000,
        epochs=60,
        batch_size=50,
        rho_min=0.01,
        rho_max=10.0,
        n_rho=7,
        seeds=[0, 1, 2],
        lr_sweep=[0.3],
        sharpness_batches=1,
        sharpness_batch_size=150,
    ),
    "quick": preset(),
    # the quick setting on three architectures: the MLP, the small CNN without normalization and with BatchNorm
    # (ResNet-20 costs 5.3 s per SAM epoch of 1 000 images on one core, 26× the small CNN: it does not fit 90 minutes)
    "medium": preset(models=["mlp", "cnn-small", "cnn-small-bn"], seeds=list(range(8))),
    "full": preset(
        models=["mlp", "cnn", "resnet20"],
        subset=5000,
        epochs=220,
        rho_min=0.001,
        n_rho=15,
        seeds=list(range(10)),
        lr_sweep_seeds=[0, 1],
    ),
}

SCHEMA = {
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
    "seeds": Param(
        list[int], "seeds of the ρ grid: SGD, SAM and USAM run on each (paired: same init and batch order)", min=0
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
        float,
        "a finite run collapsed (failed) when its test accuracy is this many points below SGD's on its seed",
        min=0,
        strict=True,
    ),
    "min_dynamic_range": Param(float, "E7.0: USAM's ‖ε‖ max/min needed to exercise the mechanism", min=1),
    "min_grid_steps": Param(
        float, "E7.1: SAM's stable range reaches at least this many grid steps beyond USAM's", min=0, strict=True
    ),
    "stable_rho": Param(float, "E7.2: the claim is about ρ up to this", min=0, strict=True),
    "loss_match": Param(float, "E7.3: matched training loss = at most this × SGD's (same seed)", min=1),
    "eps_at_work": Param(
        float,
        "E7.3: a run's late perturbation is at work when its last-epoch mean ‖ε‖ ≥ this × lr × its last-epoch "
        "mean ‖g‖ (1 = one SGD step)",
        min=0,
        strict=True,
    ),
    "flat_ratio": Param(float, "E7.3: flatter = λ/λ_SGD at most this", min=0, max=1, strict=True),
    "window_points": Param(float, "report only: the accuracy window is within this many points of SGD", min=0),
}


def validate(config: Mapping[str, Any]) -> None:
    """n_rho >= 2; rho_min <= stable_rho < rho_max; seeds distinct; the eigenvalue images fit in subset; models
    distinct."""
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
    for key in ("models", "seeds"):
        if len(set(config[key])) != len(config[key]):
            raise ConfigError(f"{key} must be distinct, got {config[key]}")


def setting(config: Mapping[str, Any], model: str) -> str:
    """The setting of ``model``'s claims, in words."""
    return (
        f"{model} on the first {config['subset']} {config['dataset']} training images (test: {config['test_subset']}"
        f"), batch {config['batch_size']}, {config['epochs']} epochs, SGD lr {config['lr']:g} ({config['schedule']}"
        + (f", last {config['decay_frac']:g} of the steps to 0" if config["schedule"] == "decay" else "")
        + f"), momentum {config['momentum']:g}, wd {config['weight_decay']:g}; ρ ∈ [{fmt(config['rho_min'])}, "
        f"{fmt(config['rho_max'])}] ({config['n_rho']} log-spaced); seeds {config['seeds']} (SGD, SAM and USAM "
        "paired by seed)"
    )


def scope(config: Mapping[str, Any]) -> list[Scope]:
    """Per model: the architecture and the data its claims E7.0–E7.4 were judged on."""
    return [
        Scope(
            model,
            f"{DESCRIPTIONS[model]}; the first {config['subset']} {config['dataset']} training images (test: "
            f"{config['test_subset']}), {config['epochs']} epochs at lr {config['lr']:g}, seeds {seed_text(config['seeds'])}",
            [f"E7.{k}-{model}" for k in range(5)],
        )
        for model in config["models"]
    ]
