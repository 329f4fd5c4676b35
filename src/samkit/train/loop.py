"""The training loop: set-up, one epoch (:func:`_run_epoch` returns an :class:`EpochStats`), evaluation, resume.

A non-finite loss or gradient ends the run as ``"diverged"`` (a result, not a crash). The data order and the
augmentation are seeded per epoch, and the checkpoint after each epoch holds the model, the optimizer, the RNG state
and the rows so far, so a resumed run is bit-identical to an uninterrupted one on the CPU.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from samkit._threads import default_threads, torch_threads
from samkit.core import global_norm
from samkit.data import ArrayDataset, DataError, Loader, load_dataset
from samkit.models import build_model
from samkit.optim import SAM, NonFiniteGradientError, registry
from samkit.optim.schedule import last_call_was_sam, resolve_start
from samkit.sharpness import top_eigenvalues
from samkit.train.config import TrainConfig, TrainError
from samkit.train.distributed import Dist
from samkit.train.records import CHECKPOINT_VERSION, CSV_FIELDS, History, Records, summarize

__all__ = ["train", "build_optimizer", "EpochStats"]


def build_optimizer(
    cfg: TrainConfig, model: nn.Module, ddp_model: nn.Module | None = None, *, total_steps: int | None = None
) -> torch.optim.Optimizer:
    """The optimizer of ``cfg``: the builder registered as ``cfg.optimizer`` (:mod:`samkit.optim.registry`).

    ``sgd``: plain SGD; ``sam`` / ``usam`` / ``unified``: :class:`samkit.SAM` with normalization ``"l2"`` /
    ``"none"`` / ``"unified"`` (λ = ``cfg.lam``); ``asam``: :class:`samkit.SAM` with ``adaptive=True`` on the groups
    of :func:`samkit.asam_param_groups` (biases and normalization layers not rescaled); ``gsam``: :class:`samkit.GSAM`
    with α = ``cfg.gsam_alpha`` (default :data:`~samkit.train.config.GSAM_ALPHA`) and a constant ρ; every SAM variant
    around SGD with ``cfg``'s learning rate, momentum and weight decay. ``model`` (the DDP wrapper when given) lets
    SAM keep the BatchNorm statistics of the first pass and run it under ``no_sync``. ``cfg.sam_start`` (late SAM)
    becomes ``start=``: a fraction of ``total_steps`` (the run's optimizer steps), or a number of steps;
    ``cfg.sam_on="norm"`` gives SAM-ON's groups (:func:`samkit.sam_on_param_groups`).

    >>> opt = build_optimizer(TrainConfig(optimizer="usam", rho=0.1), torch.nn.Linear(2, 2))
    >>> type(opt).__name__, opt.normalization
    ('SAM', 'none')
    >>> opt = build_optimizer(TrainConfig(optimizer="asam", rho=0.5), torch.nn.Linear(2, 2))
    >>> [(len(g["params"]), g["adaptive"]) for g in opt.param_groups]  # weight rescaled, bias not
    [(1, True), (1, False)]
    >>> build_optimizer(TrainConfig(optimizer="gsam", gsam_alpha=0.2), torch.nn.Linear(2, 2)).alpha
    0.2
    >>> build_optimizer(TrainConfig(optimizer="sam", sam_start=0.25), torch.nn.Linear(2, 2), total_steps=100).start
    25
    """
    entry = registry.get(cfg.optimizer)
    build = registry.Build(
        model=model,
        lr=cfg.lr,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
        rho=cfg.rho,
        perturbation=cfg.perturbation,
        net=ddp_model,
        options=entry.options({key: getattr(cfg, key, None) for key in entry.takes}),
        total_steps=total_steps,
    )
    return entry.build(build)


@dataclass
class EpochStats:
    """What one epoch measured, summed over its steps and over all ranks (every rank holds the same numbers).

    ``loss_sum`` and ``correct`` are summed over examples (at the unperturbed weights), ``grad_norm_sum`` and
    ``eps_norm_sum`` over steps and ranks; ``diverged`` is true when a step's loss or gradient norm was not finite
    (that step's non-finite values are left out of the sums).
    """

    loss_sum: float = 0.0
    correct: float = 0.0
    examples: float = 0.0
    grad_norm_sum: float = 0.0
    eps_norm_sum: float = 0.0
    rank_steps: float = 0.0
    diverged: bool = False

    @classmethod
    def from_sums(cls, sums: torch.Tensor, diverged: bool = False) -> EpochStats:
        """From the 6 sums of :func:`_step_sums` (in that order)."""
        loss_sum, correct, examples, grad_norm_sum, eps_norm_sum, rank_steps = (float(v) for v in sums)
        return cls(loss_sum, correct, examples, grad_norm_sum, eps_norm_sum, rank_steps, diverged=diverged)

    def row(self, world: int) -> dict[str, float]:
        """The epoch's metrics: mean loss and accuracy per example, mean ‖g‖ and ‖ε‖ per step and rank."""
        n = max(self.examples, 1.0)
        steps = max(self.rank_steps / world, 1.0)
        return {
            "train_loss": float("nan") if self.diverged else self.loss_sum / n,
            "train_acc": self.correct / n,
            "grad_norm": self.grad_norm_sum / world / steps,
            "eps_norm": self.eps_norm_sum / world / steps,
        }


@dataclass
class _Run:
    """The state the epochs share."""

    cfg: TrainConfig
    dist: Dist
    model: nn.Module
    net: nn.Module  # the model, or its DDP wrapper
    opt: torch.optim.Optimizer
    loader: Loader
    test_loader: Loader
    sharp_batches: list[tuple[torch.Tensor, torch.Tensor]] | None
    total_steps: int
    step: int = 0


def _step_sums(run: _Run, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """One optimizer step on ``(x, y)``; return [loss·n, correct, n, ‖g‖, ‖ε‖, 1] of this rank (float64)."""
    opt = run.opt
    lr = run.cfg.lr_at(run.step, run.total_steps)
    for g in opt.param_groups:
        g["lr"] = lr
    first_logits: list[torch.Tensor] = []

    def closure() -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        with _autocast(run):
            logits = run.net(x)
        loss = F.cross_entropy(logits.float(), y)
        loss.backward()
        if not first_logits:
            first_logits.append(logits.detach())
        return loss

    def grad_norm() -> torch.Tensor:  # ‖g‖ at w of a base step
        return global_norm([p.grad for p in run.model.parameters() if p.grad is not None])

    try:
        if isinstance(opt, SAM):
            loss = opt.step(closure)
            gn, en = opt.last_grad_norm, opt.last_perturbation_norm
            if not last_call_was_sam(opt):  # late SAM's base steps: the gradient at w, and no perturbation
                gn, en = grad_norm(), None
        else:
            loss = closure()
            gn, en = grad_norm(), None
            opt.step()
    except NonFiniteGradientError:
        loss = gn = en = torch.tensor(float("nan"))
    run.step += 1
    correct = float((first_logits[0].argmax(1) == y).sum()) if first_logits else 0.0
    n = y.numel()
    return torch.tensor(
        [float(loss.detach()) * n, correct, n, 0.0 if gn is None else float(gn), 0.0 if en is None else float(en), 1.0],
        dtype=torch.float64,
    )


def _autocast(run: _Run) -> contextlib.AbstractContextManager[Any]:
    """``--precision bf16``: bfloat16 autocast around the forward pass (both passes of a SAM step; float32 weights,
    gradients and norms, no scaler); ``fp32``: nothing."""
    if run.cfg.precision == "bf16":
        return torch.autocast(run.dist.device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _run_epoch(run: _Run, epoch: int) -> EpochStats:
    """Train one epoch (stopping at the first non-finite step of any rank); return its :class:`EpochStats`."""
    cfg, dist = run.cfg, run.dist
    run.loader.set_epoch(epoch)
    total = torch.zeros(6, dtype=torch.float64)
    # not a terminal (a log): no carriage-return bar; the per-epoch line on stdout reports progress. No bar object
    # at all when it would not show: tqdm's first bar makes a multiprocessing lock, which a worker process killed
    # on Ctrl-C (samkit sweep) never releases, so the resource tracker reported it as a leaked semaphore.
    show = cfg.progress and dist.is_main and sys.stderr.isatty()
    bar = tqdm(run.loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False) if show else None
    try:
        for x, y in bar if bar is not None else run.loader:
            sums = dist.sum(_step_sums(run, x.to(dist.device), y.to(dist.device)))  # every rank sees the same sums,
            if not (math.isfinite(float(sums[0])) and math.isfinite(float(sums[3]))):  # so all stop together
                total += torch.nan_to_num(sums, nan=0.0, posinf=0.0, neginf=0.0)
                return EpochStats.from_sums(total, diverged=True)
            total += sums
            if bar is not None:
                bar.set_postfix(loss=f"{float(sums[0] / sums[2]):.4f}", refresh=False)
    finally:
        if bar is not None:
            bar.close()
    return EpochStats.from_sums(total)


@torch.no_grad()
def _evaluate(model: nn.Module, loader: Loader, dist: Dist) -> tuple[float, float]:
    """Mean test loss and accuracy over all ranks' shards."""
    was = model.training
    model.eval()
    tot = torch.zeros(3, dtype=torch.float64)
    for x, y in loader:
        x, y = x.to(dist.device), y.to(dist.device)
        out = model(x)
        tot += torch.tensor(
            [float(F.cross_entropy(out, y, reduction="sum")), float((out.argmax(1) == y).sum()), y.numel()],
            dtype=torch.float64,
        )
    model.train(was)
    tot = dist.sum(tot)
    n = max(float(tot[2]), 1.0)
    return float(tot[0]) / n, float(tot[1]) / n


def _sharpness(run: _Run) -> float:
    """The top Hessian eigenvalue of the training loss on the fixed sharpness batches (Lanczos)."""
    device = run.dist.device
    batches = [(x.to(device), y.to(device)) for x, y in run.sharp_batches or []]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        r = top_eigenvalues(
            run.model,
            F.cross_entropy,
            batches,
            k=1,
            method="lanczos",
            tol=1e-3,
            max_iter=max(2, run.cfg.sharpness_iters),
            seed=run.cfg.seed,
        )
    return float(r.eigenvalues[0])


def _load_data(cfg: TrainConfig, data: tuple[ArrayDataset, ArrayDataset] | None) -> tuple[ArrayDataset, ArrayDataset]:
    if data is None:
        synthetic = dict(
            n_train=cfg.synthetic_train,
            n_test=cfg.synthetic_test,
            image_size=cfg.image_size,
            channels=cfg.channels,
            seed=cfg.seed,
        )
        try:
            data = load_dataset(
                cfg.dataset, cfg.data_dir, verify=cfg.verify_data, **(synthetic if cfg.dataset == "synthetic" else {})
            )
        except DataError as err:
            raise TrainError(str(err)) from None
    train_ds, test_ds = data
    return train_ds.subset(cfg.subset), test_ds.subset(cfg.test_subset)


def _setup(cfg: TrainConfig, dist: Dist, data: tuple[ArrayDataset, ArrayDataset] | None) -> _Run:
    """Data, model (seeded), optimizer and loaders of a run."""
    train_ds, test_ds = _load_data(cfg, data)
    augment = cfg.augment if cfg.augment is not None else (cfg.dataset == "cifar10")
    c, h, _ = train_ds.shape
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, in_channels=c, image_size=h, num_classes=train_ds.num_classes).to(dist.device)
    net = dist.wrap(model)
    loader = Loader(train_ds, cfg.batch_size, shuffle=True, seed=cfg.seed, augment=augment, drop_last=False)
    total_steps = len(loader) * cfg.epochs
    _check_run_options(cfg, dist, total_steps)
    opt = build_optimizer(cfg, model, net if net is not model else None, total_steps=total_steps)
    sharp_batches = None
    if cfg.sharpness_every:
        fixed = Loader(train_ds, cfg.sharpness_batch_size, shuffle=True, seed=cfg.seed + 7919, num_replicas=1, rank=0)
        sharp_batches = fixed.take(cfg.sharpness_batches)
    return _Run(
        cfg=cfg,
        dist=dist,
        model=model,
        net=net,
        opt=opt,
        loader=loader,
        test_loader=Loader(test_ds, cfg.eval_batch_size, shard_padding=False),
        sharp_batches=sharp_batches,
        total_steps=total_steps,
    )


def _check_run_options(cfg: TrainConfig, dist: Dist, total_steps: int) -> None:
    """What the config alone cannot check: late SAM starts before the last step; bf16 is supported on the device."""
    if cfg.sam_start is not None and cfg.sam_start > 0 and "sam_start" in registry.get(cfg.optimizer).takes:
        start = resolve_start(cfg.sam_start, total_steps)
        if start >= total_steps:
            raise TrainError(
                f"--sam-start {cfg.sam_start:g} is step {start}, at or past the run's {total_steps} steps "
                f"({cfg.epochs} epochs): no step would be a SAM step; choose a smaller value, or a fraction in (0, 1)"
            )
    if cfg.precision == "bf16" and dist.device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise TrainError("--precision bf16: this GPU does not support bfloat16 (use --precision fp32)")


def train(
    cfg: TrainConfig,
    *,
    resume: bool = False,
    data: tuple[ArrayDataset, ArrayDataset] | None = None,
    stop_after_epoch: int | None = None,
) -> dict[str, Any]:
    """Train as configured; return the summary (also written to ``OUT/summary.json`` when ``cfg.out`` is set).

    ``data`` may pass preloaded ``(train, test)`` :class:`~samkit.data.ArrayDataset` s (subsets still apply).
    ``resume=True`` continues from ``OUT/checkpoint.pt`` (the config must match, except ``out``, ``progress``,
    ``data_dir``, ``tensorboard``, ``quiet``, ``device``, ``verify_data``). ``stop_after_epoch`` stops after that
    epoch as if interrupted (for tests). The summary also holds ``params``, the final weights (CPU copies).
    Raises :class:`TrainError` on a bad config, missing data or an unreadable checkpoint.
    """
    cfg.validate()
    if resume and not cfg.out:
        raise TrainError("--resume needs --out (the folder of the run to continue)")
    dist = Dist(cfg.device)
    try:
        try:
            threads = cfg.threads or default_threads(dist.world)
        except ValueError as err:
            raise TrainError(str(err)) from None
        with torch_threads(threads):
            return _train(cfg, dist, resume, data, stop_after_epoch)
    finally:
        dist.close()


def _checkpoint_to_resume(cfg: TrainConfig, records: Records, resume: bool) -> dict[str, Any] | None:
    """The checkpoint to continue from (``None``: a new run); refuses a changed config or an existing run."""
    if not resume:
        if records.has_checkpoint():
            raise TrainError(
                f"{cfg.out} already holds a run (checkpoint.pt): pass --resume to continue it, or a new --out"
            )
        return None
    ckpt = records.load()
    diff = cfg.changed_from(ckpt["config"])
    if diff:
        parts = ", ".join(f"{k}: {ckpt['config'].get(k)!r} -> {getattr(cfg, k)!r}" for k in diff)
        raise TrainError(f"--resume: the config differs from the checkpoint's ({parts}); use the same flags")
    return ckpt


def _epoch_row(run: _Run, epoch: int, stats: EpochStats, t0: float) -> dict[str, Any]:
    """The epoch's row of ``metrics.csv``: training stats, then (unless diverged) test metrics and sharpness."""
    cfg = run.cfg
    row: dict[str, Any] = {"epoch": epoch + 1, "step": run.step, "lr": cfg.lr_at(run.step, run.total_steps)}
    row.update(stats.row(run.dist.world))
    if stats.diverged:
        row.update(test_loss=float("nan"), test_acc=float("nan"), status="diverged")
    else:
        row["test_loss"], row["test_acc"] = _evaluate(run.model, run.test_loader, run.dist)
        if run.sharp_batches is not None and ((epoch + 1) % cfg.sharpness_every == 0 or epoch + 1 == cfg.epochs):
            row["top_eigenvalue"] = _sharpness(run) if run.dist.is_main else None
        row["status"] = "ok"
    row["seconds"] = round(time.perf_counter() - t0, 3)  # training, evaluation and sharpness
    # the columns' order, and no empty value: the row as metrics.csv gives it back to a resumed run
    return {k: row[k] for k in CSV_FIELDS if row.get(k) is not None}


@dataclass
class _Progress:
    """What a run has done so far: its rows, status, where it diverged and its training time."""

    cfg: TrainConfig
    world: int
    rows: History
    elapsed: float = 0.0
    status: str = "running"
    diverged_at: tuple[int | None, int | None] = (None, None)

    def summary(self, status: str) -> dict[str, Any]:
        """The summary; with the history only once the run has ended (until then the rows are in metrics.csv)."""
        ended = status in ("completed", "diverged")
        return summarize(self.cfg, self.rows, status, self.diverged_at, self.elapsed, self.world, history=ended)

    def checkpoint(self, run: _Run, epoch: int, status: str) -> dict[str, Any]:
        """The checkpoint: the rows only once the run has ended; until then how many of metrics.csv it covers."""
        summary = self.summary(status)
        return {
            "version": CHECKPOINT_VERSION,
            "config": asdict(self.cfg),
            "epoch": epoch,
            "step": run.step,
            "model": run.model.state_dict(),
            "optimizer": run.opt.state_dict(),
            "rng": torch.get_rng_state(),
            "rows": self.rows.rows if "history" in summary else None,
            "metrics_rows": len(self.rows.rows),
            "elapsed": self.elapsed,
            "status": status,
            "summary": summary,
        }


def _resume_from(run: _Run, ckpt: dict[str, Any], records: Records, progress: _Progress) -> int:
    """Load the checkpoint's model, optimizer, RNG state and counters into ``run``; return the epoch to start at."""
    try:
        run.model.load_state_dict(ckpt["model"])
        run.opt.load_state_dict(ckpt["optimizer"])
    except (RuntimeError, ValueError, KeyError, TypeError) as err:
        why = " ".join(str(err).split()) or type(err).__name__
        why = why if len(why) <= 200 else why[:200] + "..."
        raise TrainError(f"--resume: {records.checkpoint} does not fit this run's model or optimizer ({why})") from None
    torch.set_rng_state(ckpt["rng"])
    run.step = int(ckpt["step"])
    progress.elapsed = float(ckpt.get("elapsed", 0.0))
    return int(ckpt["epoch"])


def _train(
    cfg: TrainConfig,
    dist: Dist,
    resume: bool,
    data: tuple[ArrayDataset, ArrayDataset] | None,
    stop_after_epoch: int | None,
) -> dict[str, Any]:
    records = Records(cfg.out, enabled=dist.is_main)
    records.claim()  # the folder is the run's, or refused, before anything is read or written there
    ckpt = _checkpoint_to_resume(cfg, records, resume)
    if ckpt is not None and ckpt["status"] in ("completed", "diverged"):
        if dist.is_main and not cfg.quiet:
            print(f"run in {cfg.out} already {ckpt['status']}; nothing to do", file=sys.stderr)
        return ckpt["summary"]
    progress = _Progress(cfg, dist.world, History(records.rows_of(ckpt)) if ckpt is not None else History())
    run = _setup(cfg, dist, data)
    start_epoch = _resume_from(run, ckpt, records, progress) if ckpt is not None else 0
    tb = _tensorboard(cfg, records) if dist.is_main else None
    cut_to = ckpt.get("metrics_bytes") if ckpt is not None and ckpt["rows"] is None else None
    records.start(cfg, progress.rows.rows, cut_to=cut_to)
    records.write_summary(progress.summary(progress.status))
    run.net.train()
    try:
        _epochs(run, records, progress, start_epoch, stop_after_epoch, tb)
        rows = progress.rows
        summary = summarize(cfg, rows, progress.status, progress.diverged_at, progress.elapsed, dist.world)
        if progress.status == "diverged":
            records.append(rows.rows[-1:])
            records.write_summary(summary)
            if records.enabled:  # keep the last finite weights (the last epoch's checkpoint), marked diverged
                last = records.load() if records.has_checkpoint() else progress.checkpoint(run, 0, "diverged")
                records.save(
                    dict(last, status="diverged", rows=rows.rows, metrics_rows=len(rows.rows), summary=summary)
                )
        dist.barrier()
        return dict(summary, params={k: v.detach().cpu().clone() for k, v in run.model.state_dict().items()})
    finally:
        if tb is not None:
            tb.close()


def _epochs(
    run: _Run, records: Records, progress: _Progress, start_epoch: int, stop_after_epoch: int | None, tb: Any
) -> None:
    """Train the epochs from ``start_epoch`` on, recording each; stop at divergence or after ``stop_after_epoch``."""
    cfg, dist = run.cfg, run.dist
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        stats = _run_epoch(run, epoch)
        row = _epoch_row(run, epoch, stats, t0)
        progress.elapsed += row["seconds"]
        progress.rows.append(row)
        if stats.diverged:
            progress.diverged_at, progress.status = (epoch + 1, run.step), "diverged"
            if dist.is_main and not cfg.quiet:
                print(f"diverged: non-finite loss or gradient at epoch {epoch + 1}, step {run.step}", file=sys.stderr)
            return
        _report(cfg, dist, row, tb)
        progress.status = "completed" if epoch + 1 == cfg.epochs else "running"
        records.append([row])  # then the checkpoint that covers it: a kill in between loses nothing
        records.write_summary(progress.summary(progress.status))
        records.save(progress.checkpoint(run, epoch + 1, progress.status))
        dist.barrier()
        if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch and progress.status == "running":
            progress.status = "interrupted"
            return


def _tensorboard(cfg: TrainConfig, records: Records) -> Any:
    """A TensorBoard writer in ``OUT/tensorboard`` when ``--tensorboard`` is set (the package is optional)."""
    if not (cfg.tensorboard and records.enabled):
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise TrainError("--tensorboard needs the tensorboard package (pip install tensorboard)") from None
    return SummaryWriter(str(records.out / "tensorboard"))


def _report(cfg: TrainConfig, dist: Dist, row: dict[str, Any], tb: Any) -> None:
    """The epoch's line on stdout (main process, unless quiet) and its TensorBoard scalars."""
    epoch = row["epoch"]
    if dist.is_main and not cfg.quiet:
        eig = f", λmax {row['top_eigenvalue']:.4g}" if row.get("top_eigenvalue") is not None else ""
        print(
            f"epoch {epoch}/{cfg.epochs}: train loss {row['train_loss']:.4f} acc {row['train_acc']:.4f}, "
            f"test loss {row['test_loss']:.4f} acc {row['test_acc']:.4f}, ‖g‖ {row['grad_norm']:.3g}, "
            f"‖ε‖ {row['eps_norm']:.3g}{eig} ({row['seconds']:.1f} s)",
            flush=True,
        )
    if tb is not None:
        for k in ("train_loss", "train_acc", "test_loss", "test_acc", "grad_norm", "eps_norm", "top_eigenvalue"):
            if row.get(k) is not None:
                tb.add_scalar(k, row[k], epoch)
