"""The ``samkit`` command line: one parser for every command.

Commands::

    samkit list                                         the experiments and their presets
    samkit run EXP [--preset P] [--out DIR] [--set key=value ...]
    samkit reproduce [--preset P] [--out DIR]           every experiment, then the report
    samkit report DIR                                   redraw figures and rewrite the report from saved data
    samkit train [--dataset D --model M --optimizer O --rho R ...]   train one model (see samkit.train)

Results are cached per work unit (a hash of its parameters), so a rerun skips finished work and an
interrupted run resumes. Bad input (unknown experiment, unknown key, a value of the wrong type, an
unwritable output directory, a bad training flag, a checkpoint or data file that cannot be trusted) prints one
line to stderr and exits with code 2. ``run`` and ``reproduce`` exit with code 1 when a claim FAILs, 0 when every
claim PASSes; ``train`` exits with 0 when the run completed or diverged (divergence is a result).

>>> args = build_parser().parse_args(["train", "--optimizer", "usam", "--rho", "0.1", "--schedule", "decay"])
>>> cfg = train_config(args)
>>> cfg.optimizer, cfg.rho, cfg.schedule, cfg.decay_frac, cfg.out
('usam', 0.1, 'decay', 0.1, 'runs/fashion-mnist-cnn-usam-rho0.1-lr0.05-s0')
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from samkit.data import DATASETS
from samkit.experiments import get, names
from samkit.experiments.base import PRESETS, ConfigError
from samkit.experiments.runner import ensure_writable, finalize, read_json, run_experiment
from samkit.models import MODELS
from samkit.report import summary, write_report
from samkit.train import TrainConfig, TrainError, train
from samkit.train.config import DEVICES, OPTIMIZERS, PERTURBATIONS, SCHEDULES

__all__ = ["main", "build_parser", "train_config"]


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr (``PROG: error: ...``) and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``samkit`` (every command, ``train`` included)."""
    p = _Parser(prog="samkit", description="SAM vs USAM: reproduce Dai, Ahn & Sra (NeurIPS 2023).")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    sub.add_parser("list", help="list the experiments and their presets")

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--preset", default="quick", help="tiny | quick | full (default: quick)")
        sp.add_argument("--out", default="results", help="output directory (default: results)")
        sp.add_argument("--no-progress", action="store_true", help="hide the progress bars")

    run = sub.add_parser("run", help="run one experiment and update the report in --out")
    run.add_argument("experiment", metavar="EXP", help="experiment name, e.g. E1 (see `samkit list`)")
    common(run)
    run.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value (typed like the preset's value; lists as a,b,c); repeatable",
    )
    rep = sub.add_parser("reproduce", help="run every experiment and write the report")
    common(rep)
    r = sub.add_parser("report", help="redraw the figures and rewrite the report of DIR from its saved data")
    r.add_argument("dir", metavar="DIR")
    _add_train_arguments(
        sub.add_parser(
            "train",
            help="train a model with SGD / SAM / USAM / unified SAM",
            description="Train an image classifier with SGD, SAM, USAM or unified SAM.",
        )
    )
    return p


def _opt_int(text: str) -> int | None:
    return None if text.lower() in ("", "none", "all") else int(text)


def _add_train_arguments(p: argparse.ArgumentParser) -> None:
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
        help="per-step learning-rate schedule: cosine to 0, constant, or decay (constant, then linear to 0 over "
        "the last --decay-frac of the steps) (default: %(default)s)",
    )
    a("--decay-frac", type=float, default=d.decay_frac, help="--schedule decay: the fraction in (0, 1] of the steps "
      "over which the learning rate falls linearly to 0 (default: %(default)s)")  # fmt: skip
    a("--seed", type=int, default=d.seed, help="default: %(default)s")
    a("--out", default=None, help="output folder (default: runs/DATASET-MODEL-OPTIMIZER-rhoR-lrL-sSEED)")
    a("--data-dir", default=None, help="data folder (default: $SAMKIT_DATA_DIR, then /usr/share/datasets/...)")
    a("--no-verify-data", dest="verify_data", action="store_false", help="read data files whose checksum is not the "
      "official one (CIFAR-10 batches are still read by the restricted reader)")  # fmt: skip
    a("--subset", type=_opt_int, default=None, metavar="N", help="train on the first N training examples")
    a("--test-subset", type=_opt_int, default=None, metavar="N", help="test on the first N test examples")
    aug = p.add_mutually_exclusive_group()
    aug.add_argument("--augment", dest="augment", action="store_true", default=None, help="crop+flip (CIFAR default)")
    aug.add_argument("--no-augment", dest="augment", action="store_false")
    a("--sharpness-every", type=int, default=0, metavar="K", help="top Hessian eigenvalue every K epochs (0: never)")
    a("--sharpness-batches", type=int, default=d.sharpness_batches, help="fixed batches for it (default: %(default)s)")
    a("--sharpness-batch-size", type=int, default=d.sharpness_batch_size, help="default: %(default)s")
    a("--sharpness-iters", type=int, default=d.sharpness_iters, help="Lanczos steps at most (default: %(default)s)")
    a("--perturbation", choices=PERTURBATIONS, default=d.perturbation, help="DDP: per-rank or averaged ε")
    a("--eval-batch-size", type=int, default=d.eval_batch_size, help="default: %(default)s")
    a("--device", choices=DEVICES, default="auto", help="auto: CUDA when available (default)")
    a("--threads", type=int, default=0, help="torch threads (0: $SAMKIT_THREADS, else 1; under DDP cores/processes)")
    a("--synthetic-train", type=int, default=d.synthetic_train, help="synthetic data: training examples")
    a("--synthetic-test", type=int, default=d.synthetic_test, help="synthetic data: test examples")
    a("--image-size", type=int, default=d.image_size, help="synthetic data: image side (default: %(default)s)")
    a("--channels", type=int, default=d.channels, help="synthetic data: 1 or 3 (default: %(default)s)")
    a("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    a("--tensorboard", action="store_true", help="also log to OUT/tensorboard (needs the tensorboard package)")
    a("--no-progress", action="store_true", help="hide the progress bars")
    a("--quiet", action="store_true", help="no per-epoch lines on stdout")


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The :class:`~samkit.train.TrainConfig` of parsed ``samkit train`` arguments (``--out`` defaults to a
    folder named after the run under ``runs/``)."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    cfg = TrainConfig(**{k: v for k, v in vars(args).items() if k in fields}, progress=not args.no_progress)
    if cfg.out is None:
        cfg.out = f"runs/{cfg.dataset}-{cfg.model}-{cfg.optimizer}-rho{cfg.rho:g}-lr{cfg.lr:g}-s{cfg.seed}"
    return cfg


def _train(args: argparse.Namespace) -> int:
    cfg = train_config(args)
    result = train(cfg, resume=args.resume)
    if int(os.environ.get("RANK", "0")) == 0:
        print(
            f"{result['status']}: final test accuracy {result.get('final_test_acc')}, "
            f"{result['seconds']:.1f} s; wrote {cfg.out}/metrics.csv, checkpoint.pt, summary.json"
        )
    return 0


def _print_claims(result: dict) -> None:
    for c in result["claims"]:
        print(f"  [{'PASS' if c['passed'] else 'FAIL'}] {c['id']}: {c['statement']} — measured {c['measured']}")


def _run(experiments: Sequence[str], preset: str, out: Path, overrides: Sequence[str], progress: bool) -> int:
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r} (choose from {', '.join(PRESETS)})")
    exps = [get(n) for n in experiments]
    configs = [e.config(preset, overrides) for e in exps]  # validate every override before any work
    ensure_writable(out)
    t0 = time.perf_counter()
    results = []
    for exp, cfg in zip(exps, configs):
        res = run_experiment(exp, preset, out, overrides, progress=progress, config=cfg)
        run = res["run"]
        print(f"{exp.name} ({exp.title}): {run['seconds']:.1f} s, {run['units']} units, {run['units_cached']} cached")
        _print_claims(res)
        results.append(res)
    paths = write_report(out)
    passed, total = summary(results)
    print(f"{passed}/{total} claims PASS in {time.perf_counter() - t0:.1f} s; report: {paths[0]} and {paths[1]}")
    return 0 if passed == total else 1


def _report(directory: Path) -> int:
    if not directory.is_dir():
        raise ConfigError(f"no such results directory {str(directory)!r}")
    ensure_writable(directory)
    dirs = sorted(p.parent for p in directory.glob("*/config.json"))
    if not dirs:
        raise ConfigError(f"{str(directory)!r} holds no experiment results (run `samkit reproduce --out DIR` first)")
    results = []
    for d in dirs:
        try:
            name = read_json(d / "config.json")["experiment"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ConfigError(f"{d / 'config.json'} is not a samkit experiment config ({type(err).__name__})") from None
        if not isinstance(name, str):
            raise ConfigError(f"{d / 'config.json'} is not a samkit experiment config (experiment {name!r})")
        results.append(finalize(get(name), d))
    paths = write_report(directory)
    passed, total = summary(results)
    print(f"{passed}/{total} claims PASS; report: {paths[0]} and {paths[1]}")
    return 0 if passed == total else 1


def _prog(args: argparse.Namespace) -> str:
    return "samkit train" if args.command == "train" else "samkit"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``samkit`` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "list":
            for n in names():
                e = get(n)
                print(f"{e.name:4s} {e.title} — {e.summary} (presets: {', '.join(e.presets)})")
            return 0
        if args.command == "run":
            return _run([args.experiment], args.preset, Path(args.out), args.overrides, not args.no_progress)
        if args.command == "reproduce":
            return _run(names(), args.preset, Path(args.out), [], not args.no_progress)
        if args.command == "report":
            return _report(Path(args.dir))
        if args.command == "train":
            return _train(args)
    except (ConfigError, TrainError) as err:
        sys.stderr.write(f"{_prog(args)}: error: {err}\n")
        return 2
    except KeyboardInterrupt:
        how = "with --resume to continue" if args.command == "train" else "to resume from the finished units"
        sys.stderr.write(f"{_prog(args)}: interrupted; rerun the same command {how}\n")
        return 130
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
