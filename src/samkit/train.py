"""``samkit train``: train an image classifier with SGD, SAM, USAM or unified SAM, with metrics and checkpoints.

One command, resumable and reproducible::

    samkit train --dataset fashion-mnist --model cnn --optimizer sam --rho 0.05 --epochs 1 --out runs/sam
    samkit train ... --out runs/sam --resume           # continue from the last finished epoch
    torchrun --nproc_per_node=2 -m samkit.train --dataset synthetic --model mlp --epochs 2 --out runs/ddp

Each run writes to ``--out``:

* ``metrics.csv``: one row per epoch: learning rate, train loss and accuracy (averaged over the epoch's
  steps, at the unperturbed weights), test loss and accuracy, mean ‖g‖ and ‖ε‖ over the epoch, the top Hessian
  eigenvalue (every ``--sharpness-every`` epochs, by Lanczos on a fixed set of training batches), seconds;
* ``checkpoint.pt``: model, optimizer and RNG state after every epoch (written atomically);
* ``summary.json``: ``status`` (``"running"``, ``"completed"`` or ``"diverged"``), the epoch and step where a
  run diverged, the final metrics and the config.

A non-finite loss or gradient ends the run as ``"diverged"`` (exit code 0: divergence is a result). ``--resume``
continues from the checkpoint; on CPU the final parameters are bit-identical to an uninterrupted run (the data
order and augmentation are seeded per epoch). Under ``torchrun`` the model is wrapped in
``DistributedDataParallel`` (gloo on CPU, NCCL on GPU), each rank reads its shard, and SAM perturbs with
each rank's own gradient (``--perturbation local``) or the averaged one (``global``).

Bad flags print one line and exit with code 2.

The same from Python (no files written when ``out`` is ``None``):

>>> from samkit.train import TrainConfig, train
>>> cfg = TrainConfig(dataset="synthetic", model="mlp", optimizer="sam", epochs=1, batch_size=32,
...                   synthetic_train=64, synthetic_test=32, image_size=8, progress=False, quiet=True)
>>> summary = train(cfg)
>>> summary["status"], len(summary["history"])
('completed', 1)
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from samkit._io import atomic_write, atomic_write_text

__all__ = ["TrainConfig", "TrainError", "train", "build_optimizer", "add_parser", "main", "OPTIMIZERS"]

OPTIMIZERS = ("sgd", "sam", "usam", "unified")
SCHEDULES = ("cosine", "constant")
_CKPT_VERSION = 1
#: Config keys that may change between a run and its ``--resume`` (they do not change the numbers).
_RESUMABLE_KEYS = ("out", "progress", "data_dir", "tensorboard", "quiet", "device")


class TrainError(ValueError):
    """A bad training configuration or missing data (printed on one line by the CLI, exit code 2)."""


@dataclass
class TrainConfig:
    """Everything a training run depends on (``samkit train --help`` documents each flag)."""

    dataset: str = "fashion-mnist"
    model: str = "cnn"
    optimizer: str = "sam"
    rho: float = 0.05
    lam: float | None = None
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 128
    epochs: int = 10
    schedule: str = "cosine"
    seed: int = 0
    out: str | None = None
    data_dir: str | None = None
    subset: int | None = None
    test_subset: int | None = None
    augment: bool | None = None
    sharpness_every: int = 0
    sharpness_batches: int = 2
    sharpness_batch_size: int = 256
    sharpness_iters: int = 20
    perturbation: str = "local"
    eval_batch_size: int = 1000
    threads: int = 0
    progress: bool = True
    tensorboard: bool = False
    quiet: bool = False
    device: str = "auto"
    synthetic_train: int = 512
    synthetic_test: int = 256
    image_size: int = 28
    channels: int = 1

    def validate(self) -> None:
        """Raise :class:`TrainError` on an invalid value."""
        from samkit.data import DATASETS
        from samkit.models import MODELS

        def bad(msg: str) -> None:
            raise TrainError(msg)

        if self.dataset not in DATASETS:
            bad(f"unknown dataset {self.dataset!r}; choose from {', '.join(DATASETS)}")
        if self.model not in MODELS:
            bad(f"unknown model {self.model!r}; choose from {', '.join(MODELS)}")
        if self.optimizer not in OPTIMIZERS:
            bad(f"unknown optimizer {self.optimizer!r}; choose from {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            bad(f"unknown schedule {self.schedule!r}; choose from {', '.join(SCHEDULES)}")
        for key in ("rho", "lr", "momentum", "weight_decay"):
            v = getattr(self, key)
            if not math.isfinite(v) or v < 0:
                bad(f"--{key.replace('_', '-')} must be a finite number >= 0, got {v}")
        if self.lr == 0:
            bad("--lr must be > 0")
        if self.optimizer == "unified":
            if self.lam is None:
                bad("--optimizer unified needs --lam (a number in [0, 1])")
            if not 0 <= self.lam <= 1:  # type: ignore[operator]
                bad(f"--lam must be in [0, 1], got {self.lam}")
        elif self.lam is not None:
            bad(f"--lam is only used with --optimizer unified (got --optimizer {self.optimizer})")
        for key in ("batch_size", "epochs", "eval_batch_size", "sharpness_batches", "sharpness_batch_size"):
            if getattr(self, key) < 1:
                bad(f"--{key.replace('_', '-')} must be >= 1, got {getattr(self, key)}")
        for key in ("sharpness_every", "threads", "sharpness_iters"):
            if getattr(self, key) < 0:
                bad(f"--{key.replace('_', '-')} must be >= 0, got {getattr(self, key)}")
        for key in ("subset", "test_subset"):
            v = getattr(self, key)
            if v is not None and v < 1:
                bad(f"--{key.replace('_', '-')} must be >= 1, got {v}")
        if self.perturbation not in ("local", "global"):
            bad(f"--perturbation must be local or global, got {self.perturbation!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            bad(f"--device must be auto, cpu or cuda, got {self.device!r}")
        if self.device == "cuda" and not torch.cuda.is_available():
            bad("--device cuda: no CUDA GPU is available (use --device cpu)")
        if self.channels not in (1, 3) or self.image_size < 4:
            bad("synthetic data needs --channels 1 or 3 and --image-size >= 4")


# ------------------------------------------------------------------------------------------------------- helpers
def _atomic_save(obj: Any, path: Path) -> None:
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


_CSV_FIELDS = (
    "epoch",
    "step",
    "lr",
    "train_loss",
    "train_acc",
    "test_loss",
    "test_acc",
    "grad_norm",
    "eps_norm",
    "top_eigenvalue",
    "seconds",
    "status",
)


def _csv_text(rows: Sequence[dict[str, Any]]) -> str:
    def cell(v: Any) -> str:
        if v is None:
            return ""
        if isinstance(v, float):
            return repr(v)
        return str(v)

    lines = [",".join(_CSV_FIELDS)]
    lines += [",".join(cell(r.get(k)) for k in _CSV_FIELDS) for r in rows]
    return "\n".join(lines) + "\n"


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    return obj


def _lr_at(cfg: TrainConfig, step: int, total: int) -> float:
    if cfg.schedule == "constant" or total <= 0:
        return cfg.lr
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))


def build_optimizer(cfg: TrainConfig, model: nn.Module, ddp_model: nn.Module | None = None) -> torch.optim.Optimizer:
    """The optimizer of ``cfg``: plain SGD, or :class:`samkit.SAM` around SGD with the chosen normalization.

    >>> opt = build_optimizer(TrainConfig(optimizer="usam", rho=0.1), torch.nn.Linear(2, 2))
    >>> type(opt).__name__, opt.normalization
    ('SAM', 'none')
    """
    sgd_kwargs = dict(lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), **sgd_kwargs)
    from samkit.optim.sam import SAM

    norm = {"sam": "l2", "usam": "none", "unified": "unified"}[cfg.optimizer]
    extra: dict[str, Any] = {}
    params = inspect.signature(SAM.__init__).parameters
    if "model" in params:  # keep BatchNorm statistics of the first pass; no_sync under DDP
        extra["model"] = ddp_model if ddp_model is not None else model
    if "perturbation" in params:
        extra["perturbation"] = cfg.perturbation
    return SAM(
        model.parameters(),
        torch.optim.SGD,
        rho=cfg.rho,
        normalization=norm,
        lam=cfg.lam if norm == "unified" else None,
        **extra,
        **sgd_kwargs,
    )


def _grad_norm(model: nn.Module) -> torch.Tensor:
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))


class _Dist:
    """The DDP context: world size, rank, and small all-reduce helpers (no-ops in a single process)."""

    def __init__(self, device: str = "auto") -> None:
        import torch.distributed as dist

        self.dist = dist
        self.owned = False
        world = int(os.environ.get("WORLD_SIZE", "1"))
        use_cuda = torch.cuda.is_available() and device != "cpu"
        if world > 1 and dist.is_available() and not dist.is_initialized():
            backend = "nccl" if use_cuda else "gloo"
            dist.init_process_group(backend)
            self.owned = True
        self.on = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        self.world = dist.get_world_size() if self.on else 1
        self.rank = dist.get_rank() if self.on else 0
        self.device = torch.device("cpu")
        if self.on and dist.get_backend() == "nccl":
            local = int(os.environ.get("LOCAL_RANK", "0"))
            torch.cuda.set_device(local)
            self.device = torch.device("cuda", local)
        elif not self.on and use_cuda:
            self.device = torch.device("cuda")

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.on:  # NCCL reduces CUDA tensors only: reduce on the training device, return on the CPU
            t = t.to(self.device, copy=True)
            self.dist.all_reduce(t)
            t = t.cpu()
        return t

    def barrier(self) -> None:
        if self.on:
            self.dist.barrier()

    def close(self) -> None:
        if self.owned:
            import gc

            gc.collect()  # free the DDP model (its reducer) before the process group: avoids a gloo teardown abort
            self.dist.barrier()
            self.dist.destroy_process_group()


def _default_threads(world: int) -> int:
    """``$SAMKIT_THREADS`` if set, else 1 (under DDP: cores / processes).

    One thread is the fastest on small, busy machines (measured on 2 shared cores, one SAM epoch of the small CNN on
    Fashion-MNIST: 73 s with 1 thread, 125 s with 2); set ``--threads`` or ``SAMKIT_THREADS`` on a bigger machine.
    """
    env = os.environ.get("SAMKIT_THREADS")
    if env:
        return max(1, int(env))
    return max(1, (os.cpu_count() or 1) // world) if world > 1 else 1


def _load_data(cfg: TrainConfig, data: Any = None):
    from samkit.data import DataError, load_dataset

    if data is None:
        try:
            data = load_dataset(
                cfg.dataset,
                cfg.data_dir,
                **(
                    dict(
                        n_train=cfg.synthetic_train,
                        n_test=cfg.synthetic_test,
                        image_size=cfg.image_size,
                        channels=cfg.channels,
                        seed=cfg.seed,
                    )
                    if cfg.dataset == "synthetic"
                    else {}
                ),
            )
        except DataError as err:
            raise TrainError(str(err)) from None
    train_ds, test_ds = data
    return train_ds.subset(cfg.subset), test_ds.subset(cfg.test_subset)


@torch.no_grad()
def _evaluate(model: nn.Module, loader: Any, dist: _Dist) -> tuple[float, float]:
    was = model.training
    model.eval()
    tot = torch.zeros(3, dtype=torch.float64)
    for x, y in loader:
        x, y = x.to(dist.device), y.to(dist.device)
        out = model(x)
        tot[0] += float(F.cross_entropy(out, y, reduction="sum"))
        tot[1] += float((out.argmax(1) == y).sum())
        tot[2] += y.numel()
    model.train(was)
    tot = dist.sum(tot)
    n = max(float(tot[2]), 1.0)
    return float(tot[0]) / n, float(tot[1]) / n


def _sharpness(model: nn.Module, batches: list, cfg: TrainConfig, device: torch.device) -> float:
    from samkit.sharpness import top_eigenvalues

    batches = [(x.to(device), y.to(device)) for x, y in batches]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        r = top_eigenvalues(
            model,
            F.cross_entropy,
            batches,
            k=1,
            method="lanczos",
            tol=1e-3,
            max_iter=max(2, cfg.sharpness_iters),
            seed=cfg.seed,
        )
    return float(r.eigenvalues[0])


# ------------------------------------------------------------------------------------------------------- training
def train(
    cfg: TrainConfig,
    *,
    resume: bool = False,
    data: Any = None,
    stop_after_epoch: int | None = None,
) -> dict[str, Any]:
    """Train as configured; return the summary (also written to ``OUT/summary.json`` when ``cfg.out`` is set).

    ``data`` may pass preloaded ``(train, test)`` :class:`~samkit.data.ArrayDataset` s (subsets still apply).
    ``resume=True`` continues from ``OUT/checkpoint.pt`` (the config must match, except ``out``, ``progress``,
    ``data_dir``, ``tensorboard``). ``stop_after_epoch`` stops after that epoch as if interrupted (for tests).
    """
    from samkit.data import Loader
    from samkit.models import build_model
    from samkit.optim.sam import SAM, NonFiniteGradientError

    cfg.validate()
    out = Path(cfg.out) if cfg.out else None
    ckpt_path = out / "checkpoint.pt" if out else None
    if resume and out is None:
        raise TrainError("--resume needs --out (the folder of the run to continue)")
    dist = _Dist(cfg.device)
    try:
        old_threads = torch.get_num_threads()
        threads = cfg.threads or _default_threads(dist.world if dist.on else 1)
        torch.set_num_threads(threads)
        try:
            return _train(cfg, dist, out, ckpt_path, resume, data, stop_after_epoch, Loader, build_model, SAM,
                          NonFiniteGradientError)  # fmt: skip
        finally:
            torch.set_num_threads(old_threads)
    finally:
        dist.close()


def _train(cfg, dist, out, ckpt_path, resume, data, stop_after_epoch, Loader, build_model, SAM, NonFiniteGradientError):
    is_main = dist.rank == 0
    ckpt = None
    if resume:
        if ckpt_path is None or not ckpt_path.exists():
            raise TrainError(f"--resume: no checkpoint at {ckpt_path}; run without --resume to start")
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        saved = ckpt["config"]
        now = asdict(cfg)
        diff = [k for k in now if k not in _RESUMABLE_KEYS and saved.get(k) != now[k]]
        if diff:
            parts = ", ".join(f"{k}: {saved.get(k)!r} -> {now[k]!r}" for k in diff)
            raise TrainError(f"--resume: the config differs from the checkpoint's ({parts}); use the same flags")
        if ckpt.get("status") in ("completed", "diverged"):
            if is_main and not cfg.quiet:
                print(f"run in {out} already {ckpt['status']}; nothing to do", file=sys.stderr)
            return ckpt["summary"]
    elif out is not None and ckpt_path is not None and ckpt_path.exists():
        raise TrainError(f"{out} already holds a run (checkpoint.pt): pass --resume to continue it, or a new --out")

    train_ds, test_ds = _load_data(cfg, data)
    augment = cfg.augment if cfg.augment is not None else (cfg.dataset == "cifar10")
    c, h, w = train_ds.shape
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, in_channels=c, image_size=h, num_classes=train_ds.num_classes).to(dist.device)
    ddp = None
    if dist.on:
        from torch.nn.parallel import DistributedDataParallel

        ddp = DistributedDataParallel(model, device_ids=[dist.device.index] if dist.device.type == "cuda" else None)
    net = ddp if ddp is not None else model
    opt = build_optimizer(cfg, model, ddp)
    is_sam = isinstance(opt, SAM)
    loader = Loader(train_ds, cfg.batch_size, shuffle=True, seed=cfg.seed, augment=augment, drop_last=False)
    test_loader = Loader(test_ds, cfg.eval_batch_size, shard_padding=False)
    steps_per_epoch = len(loader)
    total_steps = steps_per_epoch * cfg.epochs
    sharp_batches = None
    if cfg.sharpness_every:
        fixed = Loader(train_ds, cfg.sharpness_batch_size, shuffle=True, seed=cfg.seed + 7919, num_replicas=1, rank=0)
        sharp_batches = fixed.take(cfg.sharpness_batches)

    rows: list[dict[str, Any]] = []
    start_epoch, step = 0, 0
    elapsed = 0.0
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        torch.set_rng_state(ckpt["rng"])
        rows = list(ckpt["rows"])
        start_epoch, step = int(ckpt["epoch"]), int(ckpt["step"])
        elapsed = float(ckpt.get("elapsed", 0.0))

    tb = None
    if cfg.tensorboard and out is not None and is_main:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise TrainError("--tensorboard needs the tensorboard package (pip install tensorboard)") from None
        tb = SummaryWriter(str(out / "tensorboard"))

    summary: dict[str, Any] = {"status": "running", "diverged_epoch": None, "diverged_step": None}

    def write(status: str) -> None:
        summary.update(_summary(cfg, rows, status, summary, elapsed, dist.world))
        if out is None or not is_main:
            return
        atomic_write_text(out / "metrics.csv", _csv_text(rows))
        atomic_write_text(out / "summary.json", json.dumps(_json_safe(summary), indent=1) + "\n")

    if out is not None and is_main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "config.json", json.dumps(asdict(cfg), indent=1) + "\n")
        write("running")

    def save_checkpoint(epoch: int, status: str) -> None:
        if ckpt_path is None or not is_main:
            return
        _atomic_save(
            {
                "version": _CKPT_VERSION,
                "config": asdict(cfg),
                "epoch": epoch,
                "step": step,
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "rng": torch.get_rng_state(),
                "rows": rows,
                "elapsed": elapsed,
                "status": status,
                "summary": _json_safe(summary),
            },
            ckpt_path,
        )

    from tqdm.auto import tqdm

    status = "completed"
    net.train()
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        loader.set_epoch(epoch)
        acc = torch.zeros(6, dtype=torch.float64)  # loss sum, correct, count, ‖g‖ sum, ‖ε‖ sum, steps
        diverged = False
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, disable=not (cfg.progress and is_main))
        for x, y in bar:
            x, y = x.to(dist.device), y.to(dist.device)
            lr = _lr_at(cfg, step, total_steps)
            for g in opt.param_groups:
                g["lr"] = lr
            logits_box: list[torch.Tensor] = []

            def closure(x=x, y=y, box=logits_box):
                opt.zero_grad(set_to_none=True)
                out_ = net(x)
                loss_ = F.cross_entropy(out_, y)
                loss_.backward()
                if not box:
                    box.append(out_.detach())
                return loss_

            try:
                if is_sam:
                    loss = opt.step(closure)
                    gn = opt.last_grad_norm
                    en = opt.last_perturbation_norm
                else:
                    loss = closure()
                    gn = _grad_norm(model)
                    en = torch.zeros(())
                    opt.step()
            except NonFiniteGradientError:
                loss = torch.tensor(float("nan"))
                gn = en = torch.tensor(float("nan"))
            step += 1
            stats = torch.tensor(
                [
                    float(loss.detach()) * y.numel(),
                    float((logits_box[0].argmax(1) == y).sum()) if logits_box else 0.0,
                    y.numel(),
                    float(gn) if gn is not None else 0.0,
                    float(en) if en is not None else 0.0,
                    1.0,
                ],
                dtype=torch.float64,
            )
            stats = dist.sum(stats)  # every rank sees the same numbers, so all stop together on divergence
            if not math.isfinite(float(stats[0])) or not math.isfinite(float(stats[3])):
                diverged = True
                acc += torch.nan_to_num(stats, nan=0.0, posinf=0.0, neginf=0.0)
                break
            acc += stats
            if cfg.progress and is_main:
                bar.set_postfix(loss=f"{float(stats[0] / stats[2]):.4f}", refresh=False)
        bar.close()
        n = max(float(acc[2]), 1.0)
        ns = max(float(acc[5]) / dist.world, 1.0)
        row: dict[str, Any] = {
            "epoch": epoch + 1,
            "step": step,
            "lr": _lr_at(cfg, step, total_steps),
            "train_loss": float(acc[0]) / n,
            "train_acc": float(acc[1]) / n,
            "grad_norm": float(acc[3]) / dist.world / ns,
            "eps_norm": float(acc[4]) / dist.world / ns,
        }
        if diverged:
            row.update(train_loss=float("nan"), test_loss=float("nan"), test_acc=float("nan"), status="diverged")
            row["seconds"] = round(time.perf_counter() - t0, 3)
            elapsed += row["seconds"]
            rows.append(row)
            summary["diverged_epoch"], summary["diverged_step"] = epoch + 1, step
            status = "diverged"
            if is_main and not cfg.quiet:
                print(f"diverged: non-finite loss or gradient at epoch {epoch + 1}, step {step}", file=sys.stderr)
            break
        row["test_loss"], row["test_acc"] = _evaluate(model, test_loader, dist)
        if sharp_batches is not None and ((epoch + 1) % cfg.sharpness_every == 0 or epoch + 1 == cfg.epochs):
            row["top_eigenvalue"] = _sharpness(model, sharp_batches, cfg, dist.device) if is_main else None
        row["seconds"] = round(time.perf_counter() - t0, 3)  # training, evaluation and sharpness
        elapsed += row["seconds"]
        row["status"] = "ok"
        rows.append(row)
        if is_main and not cfg.quiet:
            eig = f", λmax {row['top_eigenvalue']:.4g}" if row.get("top_eigenvalue") is not None else ""
            print(
                f"epoch {epoch + 1}/{cfg.epochs}: train loss {row['train_loss']:.4f} acc {row['train_acc']:.4f}, "
                f"test loss {row['test_loss']:.4f} acc {row['test_acc']:.4f}, ‖g‖ {row['grad_norm']:.3g}, "
                f"‖ε‖ {row['eps_norm']:.3g}{eig} ({row['seconds']:.1f} s)",
                flush=True,
            )
        if tb is not None:
            for k in ("train_loss", "train_acc", "test_loss", "test_acc", "grad_norm", "eps_norm", "top_eigenvalue"):
                if row.get(k) is not None:
                    tb.add_scalar(k, row[k], epoch + 1)
        final = epoch + 1 == cfg.epochs
        write("completed" if final else "running")
        save_checkpoint(epoch + 1, "completed" if final else "running")
        dist.barrier()
        if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch and not final:
            summary["status"] = "interrupted"
            if tb is not None:
                tb.close()
            return dict(summary, params=_params(model))
    write(status)
    if status == "diverged" and ckpt_path is not None and is_main:
        # keep the last finite weights (the last epoch's checkpoint) and mark the run finished as diverged
        if ckpt_path.exists():
            last = torch.load(ckpt_path, map_location="cpu", weights_only=False)
            last.update(status="diverged", rows=rows, summary=_json_safe(summary))
            _atomic_save(last, ckpt_path)
        else:
            save_checkpoint(0, "diverged")
    if tb is not None:
        tb.close()
    dist.barrier()
    return dict(summary, params=_params(model))


def _params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def _summary(
    cfg: TrainConfig, rows: list[dict[str, Any]], status: str, prev: dict[str, Any], elapsed: float, world: int
) -> dict[str, Any]:
    ok = [r for r in rows if r.get("status") == "ok"]
    last = ok[-1] if ok else {}
    eigs = [r["top_eigenvalue"] for r in ok if r.get("top_eigenvalue") is not None]
    return {
        "status": status,
        "diverged_epoch": prev.get("diverged_epoch"),
        "diverged_step": prev.get("diverged_step"),
        "epochs_done": len(ok),
        "final_test_acc": last.get("test_acc"),
        "final_test_loss": last.get("test_loss"),
        "final_train_loss": last.get("train_loss"),
        "final_train_acc": last.get("train_acc"),
        "best_test_acc": max((r["test_acc"] for r in ok), default=None),
        "final_top_eigenvalue": eigs[-1] if eigs else None,
        "seconds": round(elapsed, 2),
        "world_size": world,
        "history": rows,
        "config": asdict(cfg),
    }


# ------------------------------------------------------------------------------------------------------- CLI
class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"samkit train: error: {message}\n")
        raise SystemExit(2)


def _opt_int(text: str) -> int | None:
    return None if text.lower() in ("", "none", "all") else int(text)


def _configure(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    from samkit.data import DATASETS
    from samkit.models import MODELS

    d = TrainConfig()
    a = p.add_argument
    a("--dataset", choices=DATASETS, default=d.dataset, help="default: %(default)s")
    a("--model", choices=MODELS, default=d.model, help="default: %(default)s")
    a("--optimizer", choices=OPTIMIZERS, default=d.optimizer, help="sgd | sam (normalized) | usam | unified (λ)")
    a("--rho", type=float, default=d.rho, help="perturbation radius ρ (default: %(default)s)")
    a("--lam", type=float, default=None, help="λ in [0, 1] for --optimizer unified")
    a("--lr", type=float, default=d.lr, help="peak learning rate (default: %(default)s)")
    a("--momentum", type=float, default=d.momentum, help="SGD momentum (default: %(default)s)")
    a("--weight-decay", type=float, default=d.weight_decay, help="default: %(default)s")
    a("--batch-size", type=int, default=d.batch_size, help="per process (default: %(default)s)")
    a("--epochs", type=int, default=d.epochs, help="default: %(default)s")
    a(
        "--schedule",
        choices=SCHEDULES,
        default=d.schedule,
        help="per-step learning-rate schedule (default: %(default)s)",
    )
    a("--seed", type=int, default=d.seed, help="default: %(default)s")
    a("--out", default=None, help="output folder (default: runs/DATASET-MODEL-OPTIMIZER-rhoR-lrL-sSEED)")
    a("--data-dir", default=None, help="data folder (default: $SAMKIT_DATA_DIR, then /usr/share/datasets/...)")
    a("--subset", type=_opt_int, default=None, metavar="N", help="train on the first N training examples")
    a("--test-subset", type=_opt_int, default=None, metavar="N", help="test on the first N test examples")
    aug = p.add_mutually_exclusive_group()
    aug.add_argument("--augment", dest="augment", action="store_true", default=None, help="crop+flip (CIFAR default)")
    aug.add_argument("--no-augment", dest="augment", action="store_false")
    a("--sharpness-every", type=int, default=0, metavar="K", help="top Hessian eigenvalue every K epochs (0: never)")
    a("--sharpness-batches", type=int, default=d.sharpness_batches, help="fixed batches for it (default: %(default)s)")
    a("--sharpness-batch-size", type=int, default=d.sharpness_batch_size, help="default: %(default)s")
    a("--sharpness-iters", type=int, default=d.sharpness_iters, help="Lanczos steps at most (default: %(default)s)")
    a("--perturbation", choices=("local", "global"), default=d.perturbation, help="DDP: per-rank or averaged ε")
    a("--eval-batch-size", type=int, default=d.eval_batch_size, help="default: %(default)s")
    a("--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto: CUDA when available (default)")
    a("--threads", type=int, default=0, help="torch threads (0: $SAMKIT_THREADS, else 1; under DDP cores/processes)")
    a("--synthetic-train", type=int, default=d.synthetic_train, help="synthetic data: training examples")
    a("--synthetic-test", type=int, default=d.synthetic_test, help="synthetic data: test examples")
    a("--image-size", type=int, default=d.image_size, help="synthetic data: image side (default: %(default)s)")
    a("--channels", type=int, default=d.channels, help="synthetic data: 1 or 3 (default: %(default)s)")
    a("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    a("--tensorboard", action="store_true", help="also log to OUT/tensorboard (needs the tensorboard package)")
    a("--no-progress", action="store_true", help="hide the progress bars")
    a("--quiet", action="store_true", help="no per-epoch lines on stdout")
    return p


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``train`` command to ``samkit``'s subparsers; ``samkit`` then calls :func:`run_args`."""
    sp = subparsers.add_parser("train", help="train a model with SGD / SAM / USAM / unified SAM")
    return _configure(sp)


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``samkit train`` / ``python -m samkit.train``."""
    return _configure(
        _Parser(prog="samkit train", description="Train an image classifier with SGD, SAM, USAM or unified SAM.")
    )


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """A :class:`TrainConfig` from parsed arguments."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    kw = {k: v for k, v in vars(args).items() if k in fields}
    kw["progress"] = not args.no_progress
    cfg = TrainConfig(**kw)
    if cfg.out is None:
        cfg.out = f"runs/{cfg.dataset}-{cfg.model}-{cfg.optimizer}-rho{cfg.rho:g}-lr{cfg.lr:g}-s{cfg.seed}"
    return cfg


def run_args(args: argparse.Namespace) -> int:
    """Run ``samkit train`` from parsed arguments; return the exit code."""
    try:
        cfg = config_from_args(args)
        summary = train(cfg, resume=args.resume)
    except TrainError as err:
        sys.stderr.write(f"samkit train: error: {err}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("samkit train: interrupted; rerun the same command with --resume to continue\n")
        return 130
    if int(os.environ.get("RANK", "0")) == 0:
        print(
            f"{summary['status']}: final test accuracy {summary.get('final_test_acc')}, "
            f"{summary['seconds']:.1f} s; wrote {cfg.out}/metrics.csv, checkpoint.pt, summary.json"
        )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``samkit train`` and ``python -m samkit.train``."""
    return run_args(build_parser().parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
