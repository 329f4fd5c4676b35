"""E7's work: one training run per (model, method, learning rate, ρ, seed), and the tidy tables of their results.

This module and what it imports are the code that computes a unit (its source is the units' cache fingerprint);
the analysis, claims and figures live elsewhere, so changing how the results are judged or drawn keeps the cache.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from samkit.experiments.base import ConfigError, Unit
from samkit.experiments.e7.config import METHODS, TRAIN_KEYS, rho_grid

#: Test images that ``samkit.train`` evaluates after every epoch. E7 uses only the final model's test accuracy, which
#: it measures itself on ``test_subset`` images: 10 000 images every epoch would cost as much as the training.
_EPOCH_TEST_IMAGES = 10

_DATA_CACHE: dict[str, Any] = {}


def num(v: Any) -> float:
    """A float, NaN for a missing value (``None`` or an empty cell) or a non-finite one saved as text."""
    if v is None or v == "":
        return float("nan")
    return float(v)


def load_data(dataset: str) -> Any:
    """The full ``(train, test)`` of a dataset, loaded once per process."""
    from samkit.data import DataError, load_dataset

    if dataset not in _DATA_CACHE:
        try:
            _DATA_CACHE[dataset] = load_dataset(dataset)
        except DataError as err:
            raise ConfigError(f"E7: {err}") from None
    return _DATA_CACHE[dataset]


def units(config: Mapping[str, Any]) -> list[Unit]:
    """SGD on every seed, SAM and USAM at every (ρ of the grid, seed), the learning-rate sweep; one unit each.

    A run's ``rho_index`` is its position in :func:`~samkit.experiments.e7.config.rho_grid` (−1 for SGD and for a
    sweep run off the grid).
    """
    base = {k: config[k] for k in TRAIN_KEYS}
    grid = rho_grid(config)
    lr0 = config["lr"]
    runs: dict[tuple, int] = {}
    for model in config["models"]:
        for s in config["seeds"]:
            runs[(model, "sgd", lr0, 0.0, s)] = -1
        for m in METHODS:
            for k, rho in enumerate(grid):
                for s in config["seeds"]:
                    runs[(model, m, lr0, rho, s)] = k
        for lr in config["lr_sweep"]:
            for s in config["lr_sweep_seeds"]:
                runs.setdefault((model, "sgd", lr, 0.0, s), -1)
                for m in METHODS:
                    runs.setdefault((model, m, lr, config["lr_sweep_rho"], s), -1)
    # the Hessian spectrum (report only) of SGD and of SAM / USAM at the grid ρ nearest density_rho, first seed
    d_rho = min(grid, key=lambda r: abs(math.log(r / config["density_rho"])))
    spectrum = {(m, lr0, r, config["seeds"][0]) for m, r in (("sgd", 0.0), ("sam", d_rho), ("usam", d_rho))}
    out = []
    for (model, m, lr, rho, s), k in runs.items():
        p = {**base, "model": model, "optimizer": m, "lr": lr, "rho": rho, "rho_index": k, "seed": s}
        if (m, lr, rho, s) in spectrum:
            p["density"] = {"probes": config["density_probes"], "steps": config["density_steps"]}
        out.append(Unit(f"{model}-{m}-lr{lr:g}-r{rho:g}-s{s}", p))
    return out


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


def run_unit(params: Mapping[str, Any]) -> dict[str, Any]:
    """Train one run (:func:`samkit.train.train`); its final test accuracy and loss, training loss, top Hessian
    eigenvalue, per-epoch curves (lr, loss, accuracy, ‖g‖, ‖ε‖) and, when asked, its Hessian spectrum."""
    from samkit.models import build_model
    from samkit.train import TrainConfig, train

    train_ds, test_ds = load_data(params["dataset"])
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


def run_tables(config: Mapping[str, Any], results: Mapping[str, Mapping[str, Any]]) -> dict[str, list[dict]]:
    """``runs`` (one row per run, with its ``rho_index``), ``curves`` (one row per run and epoch) and ``spectrum``
    (one row per node of each measured Hessian spectrum)."""
    runs: list[dict] = []
    curves: list[dict] = []
    spectrum: list[dict] = []
    for unit in units(config):
        r, p = results[unit.key], unit.params
        key = {"model": p["model"], "method": p["optimizer"], "lr": p["lr"], "rho": p["rho"], "seed": p["seed"]}
        runs.append(
            {
                **key,
                "rho_index": p["rho_index"],
                "diverged": bool(r["diverged"]),
                "diverged_epoch": r["diverged_epoch"] if r["diverged_epoch"] is not None else "",
                "test_acc": num(r["test_acc"]),
                "test_loss": num(r["test_loss"]),
                "train_loss": num(r["train_loss"]),
                "top_eigenvalue": num(r["top_eigenvalue"]),
            }
        )
        for i, ep in enumerate(r["epochs"]):
            curves.append(
                {
                    **key,
                    "epoch": ep,
                    "lr_end": num(r["curve_lr"][i]),
                    "train_loss": num(r["curve_train_loss"][i]),
                    "train_acc": num(r["curve_train_acc"][i]),
                    "grad_norm": num(r["curve_grad_norm"][i]),
                    "eps_norm": num(r["curve_eps_norm"][i]),
                }
            )
        for i, (nodes, weights) in enumerate(r.get("spectrum") or []):
            spectrum.extend({**key, "probe": i, "node": num(x), "weight": num(w)} for x, w in zip(nodes, weights))
    return {"runs": runs, "curves": curves, "spectrum": spectrum}
