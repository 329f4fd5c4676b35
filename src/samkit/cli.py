"""The ``samkit`` command line: one parser for every command.

Commands::

    samkit --version
    samkit list [EXP]                                   the experiments; with EXP its config keys and their ranges
    samkit run EXP [--preset P] [--out DIR] [--set key=value ...] [--jobs N | --executor ray]
    samkit reproduce [--preset P] [--out DIR] [--jobs N | --executor ray]   every experiment, then the report
    samkit report [DIR]                                 redraw figures and rewrite the report from saved data
    samkit train [--dataset D --model M --optimizer O --rho R ...]   train one model (see samkit.train)
                 O: sgd | sam | usam | unified (--lam) | asam | gsam (--gsam-alpha)
                 [--sam-start S (late SAM)] [--sam-on norm (SAM-ON)] [--precision bf16]
    samkit sweep --optimizer sam,usam --rho 0.01,0.1 --seed 0,1 [any train flag] --out DIR [--jobs N]

Results are cached per work unit (a hash of its parameters and code), so a rerun skips finished work and an
interrupted run resumes. Units run on ``--jobs`` local processes (default: every core) or on a Ray cluster
(``--executor ray``); the numbers do not depend on where they run.

Exit codes (every command; ``samkit --help`` lists them too): 0 success (every claim PASSes); 1 a claim did not
pass (FAIL, INCONCLUSIVE or NOT EXERCISED); 2 bad usage or configuration (unknown experiment or key, a value out of range, an
unwritable folder, a bad training flag, a checkpoint or data file that cannot be trusted); 3 a runtime failure (a
unit raised, an experiment could not run, damaged or edited result files, a file could not be written, out of memory,
any unexpected error); 130 interrupted (rerun to resume). ``train`` exits with 0 when the run completed or diverged
(divergence is a result). Every error is one line on stderr, ``samkit: error: ...`` (``samkit train: error: ...``
for ``train``); ``SAMKIT_TRACEBACK=1`` shows the traceback as well, with the same exit code.

>>> args = build_parser().parse_args(["train", "--optimizer", "usam", "--rho", "0.1", "--schedule", "decay"])
>>> cfg = train_config(args)
>>> cfg.optimizer, cfg.rho, cfg.schedule, cfg.decay_frac, cfg.out
('usam', 0.1, 'decay', 0.1, 'runs/fashion-mnist-cnn-usam-rho0.1-lr0.05-s0')
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import samkit
from samkit.data import DATASETS
from samkit.experiments import describe, get, names
from samkit.experiments.base import PRESETS, ConfigError
from samkit.experiments.executors import Executor, RayMissingError, default_jobs, make_executor
from samkit.experiments.locking import folder_lock
from samkit.experiments.plan import Plan, make_plan
from samkit.experiments.results import ExperimentResult, Tally, experiment_dirs
from samkit.experiments.runner import UnitError, run_experiments
from samkit.experiments.store import DamagedDataError, claim_results_folder, ensure_writable
from samkit.models import MODELS
from samkit.report import collect, rejudge, write_report
from samkit.sweep import SweepRun, claim_sweep_folder, expand_grid, run_name, run_sweep
from samkit.train import TrainConfig, train
from samkit.train.config import DEVICES, GSAM_ALPHA, OPTIMIZERS, PERTURBATIONS, PRECISIONS, SAM_ON, SCHEDULES
from samkit.train.records import Records

__all__ = ["main", "build_parser", "train_config"]


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` states every flag's default, except where there is none (``None``, an off switch) or the help
    already says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default in (None, False, [], argparse.SUPPRESS) or "default" in text or action.nargs == 0:
            return text  # nothing to show, already said, or an on/off switch
        if not action.option_strings and action.nargs != "?":
            return text
        return text + " (default: %(default)s)"


class _EpilogFormatter(argparse.RawDescriptionHelpFormatter, _Formatter):
    """:class:`_Formatter` that keeps the line breaks of the description and the epilog."""


_EXIT_CODES = """exit codes (every command):
  0    success: every claim PASSes (train: the run completed, or diverged: divergence is a result)
  1    a claim did not pass (FAIL, INCONCLUSIVE or NOT EXERCISED)
  2    bad usage or configuration: unknown experiment or key, a value out of range, an unwritable
       folder or one holding files samkit did not write, a link inside a results folder, a bad training
       flag, a checkpoint or data file that cannot be trusted (one line on stderr)
  3    a runtime failure: a unit raised, an experiment could not run, damaged or edited result files, a file
       could not be written, out of memory, any unexpected error (one line on stderr)
  130  interrupted: rerun the same command to resume"""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr and exit code 2, under the command's error prefix
    (``samkit: error: ...``; ``samkit train: error: ...`` for ``samkit train``), and whose ``--help`` shows
    the defaults."""

    def __init__(self, *args: Any, error_prog: str = "samkit", **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)
        self.error_prog = error_prog

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.error_prog}: error: {message}\n")
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``samkit`` (every command, ``train`` included)."""
    p = _Parser(
        prog="samkit",
        description="SAM vs USAM: reproduce Dai, Ahn & Sra (NeurIPS 2023).",
        epilog=_EXIT_CODES,
        formatter_class=_EpilogFormatter,
    )
    p.add_argument("--version", action="version", version=f"samkit {samkit.__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    ls = sub.add_parser(
        "list",
        help="list the experiments; with EXP, its config keys (type, value per preset, allowed range)",
        description="Without EXP: every experiment and its presets. With EXP: every config key that "
        "`samkit run EXP --set KEY=VALUE` accepts, with its type, its value in each preset and what is allowed.",
    )
    ls.add_argument("experiment", metavar="EXP", nargs="?", default=None, help="an experiment, e.g. E3")

    def common(sp: argparse.ArgumentParser, own_presets: bool = False) -> None:
        if own_presets:  # the experiments' own presets, looked up only when --preset is checked or --help shown
            sp.add_argument("--preset", default="quick", choices=_Presets(), action=_PresetAction, metavar="PRESET")
        else:
            sp.add_argument("--preset", default="quick", choices=PRESETS, help="the size of every experiment")
        sp.add_argument("--out", default="results", type=_folder, help="output directory")
        sp.add_argument("--no-progress", action="store_true", help="hide the progress bars")
        sp.add_argument(
            "--device",
            choices=("cpu", "cuda"),
            default=None,
            help="torch device of the experiments that train networks (E7; sets their `device` key): cpu, the "
            "presets' default, gives the same numbers on every machine; cuda uses the GPU each unit is given",
        )
        _add_executor_arguments(sp)

    run = sub.add_parser("run", help="run one experiment and update the report in --out")
    run.add_argument("experiment", metavar="EXP", help="experiment name, e.g. E1 (see `samkit list`)")
    common(run, own_presets=True)
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
    r.add_argument(
        "dir", metavar="DIR", nargs="?", default="results", type=_folder, help="the results folder of `samkit run`"
    )
    _add_train_arguments(
        sub.add_parser(
            "train",
            help="train a model with SGD / SAM / USAM / unified SAM / ASAM / GSAM",
            description="Train an image classifier with SGD, SAM, USAM, unified SAM, ASAM or GSAM.",
            error_prog="samkit train",
        )
    )
    sw = sub.add_parser(
        "sweep",
        help="a grid of training runs (comma lists of any train flag), then sweep.csv and sweep.png",
        description="Run every combination of the comma-separated values of the train flags given (e.g. "
        "--optimizer sam,usam --rho 0.01,0.1,1 --seed 0,1,2), each run in OUT/runs/NAME (resumable), then write "
        "OUT/sweep.csv (one row per run) and OUT/sweep.png (test accuracy against rho and against the realised "
        "mean perturbation norm).",
    )
    sw.add_argument("--out", required=True, type=_folder, help="the sweep's folder")
    _add_executor_arguments(sw)
    sw.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    _add_train_arguments(sw, grid=True)
    return p


def _folder(text: str) -> str:
    """An output folder flag: any path but the empty one (which would mean the current folder, silently)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty (name a new folder, e.g. results)")
    return text


def _jobs(text: str) -> int | None:
    if text == "auto":
        return None
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be 'auto' or an integer >= 1, got {text!r}")
    return n


def _add_executor_arguments(sp: argparse.ArgumentParser) -> None:
    sp.add_argument(
        "--jobs",
        type=_jobs,
        default=None,
        metavar="N",
        help="local worker processes for the work units (default: auto = every core this process may use)",
    )
    sp.add_argument(
        "--executor",
        choices=("local", "ray"),
        default="local",
        help="local: this machine's processes; ray: one Ray task per unit (pip install 'samkit[ray]') "
        "(default: %(default)s)",
    )
    sp.add_argument(
        "--address",
        default=None,
        help="--executor ray: the cluster to join ('auto' for the one this node belongs to, or HOST:PORT); "
        "default: start a local Ray instance",
    )
    sp.add_argument(
        "--gpus-per-unit",
        type=float,
        default=0.0,
        metavar="F",
        help="--executor ray: GPUs each training unit asks for (fractions share a GPU, e.g. 0.25); default 0",
    )


def _executor(args: argparse.Namespace) -> Executor:
    if args.executor != "ray" and (args.address or args.gpus_per_unit):
        raise ConfigError("--address and --gpus-per-unit need --executor ray")
    if not (0.0 <= args.gpus_per_unit) or args.gpus_per_unit != args.gpus_per_unit:
        raise ConfigError(f"--gpus-per-unit must be a number >= 0, got {args.gpus_per_unit}")
    jobs = args.jobs
    cores = default_jobs()
    if args.executor != "ray" and jobs is not None and jobs > cores:
        sys.stderr.write(f"samkit: warning: --jobs {jobs} is more than the {cores} cores here: using {cores}\n")
        jobs = cores
    try:
        return make_executor(args.executor, jobs, args.address)
    except RayMissingError as err:
        raise ConfigError(str(err)) from None
    except ConnectionError as err:
        raise ConfigError(str(err)) from None


def _opt_int(text: str) -> int | None:
    return None if text.lower() in ("", "none", "all") else int(text)


#: ``samkit train`` flags that ``samkit sweep`` does not take (the sweep owns the run folders and their output).
_NOT_SWEPT = ("--out", "--resume", "--no-progress", "--quiet")


def _grid_type(convert: Any, choices: Sequence[Any] | None) -> Any:
    """An argparse type that reads ``a,b,c`` into a list, converting and checking each element."""

    def parse(text: str) -> list[Any]:
        out = []
        for part in text.split(","):
            try:
                v = convert(part.strip())
            except ValueError:
                kind = getattr(convert, "__name__", "value")
                raise argparse.ArgumentTypeError(f"invalid {kind} value {part.strip()!r} in {text!r}") from None
            if choices is not None and v not in choices:
                raise argparse.ArgumentTypeError(f"invalid choice {v!r} (choose from {', '.join(map(str, choices))})")
            out.append(v)
        return out

    parse.__name__ = getattr(convert, "__name__", "value")
    return parse


def _add_train_arguments(p: argparse.ArgumentParser, *, grid: bool = False) -> None:
    """The ``samkit train`` flags; with ``grid=True`` (``samkit sweep``) every valued flag takes a comma list."""
    d = TrainConfig()

    def a(*flags: str, **kw: Any) -> None:
        if grid:
            if flags[0] in _NOT_SWEPT:
                return
            if kw.get("action") is None:
                kw["type"] = _grid_type(kw.get("type", str), kw.pop("choices", None))
                kw["help"] = (kw.get("help") or "") + " (comma list: one run per value)"
        p.add_argument(*flags, **kw)

    a("--dataset", choices=DATASETS, default=d.dataset, help="default: %(default)s")
    a("--model", choices=MODELS, default=d.model, help="default: %(default)s")
    a(
        "--optimizer",
        choices=OPTIMIZERS,
        default=d.optimizer,
        help="sgd | sam (normalized) | usam (unnormalized) | unified (λ) | asam (adaptive, biases and norm layers "
        "not rescaled) | gsam (surrogate gap, constant ρ); every SAM variant wraps SGD",
    )
    a("--rho", type=float, default=d.rho, help="perturbation radius ρ (ASAM's ρ is usually 10x SAM's)")
    a("--lam", type=float, default=None, help="λ in [0, 1] for --optimizer unified")
    a("--gsam-alpha", type=float, default=None, help=f"GSAM's α >= 0 for --optimizer gsam (default {GSAM_ALPHA})")
    _add_variant_arguments(a)
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
    decay_help = (
        "--schedule decay: the fraction in (0, 1] of the steps over which the learning rate falls linearly to 0"
    )
    a("--decay-frac", type=float, default=d.decay_frac, help=decay_help + " (default: %(default)s)")
    a("--seed", type=int, default=d.seed, help="default: %(default)s")
    a("--out", default=None, type=_folder, help="output folder (default: runs/DATASET-MODEL-OPTIMIZER-rhoR-lrL-sSEED)")
    a("--data-dir", default=None, help="data folder (default: $SAMKIT_DATA_DIR, then /usr/share/datasets/...)")
    unverified = "read data files whose checksum is not the official one (CIFAR-10 batches are still read by the "
    a("--no-verify-data", dest="verify_data", action="store_false", help=unverified + "restricted reader)")
    a("--subset", type=_opt_int, default=None, metavar="N", help="train on the first N training examples")
    a("--test-subset", type=_opt_int, default=None, metavar="N", help="test on the first N test examples")
    aug = p.add_mutually_exclusive_group()  # a switch: not swept
    aug.add_argument("--augment", dest="augment", action="store_true", default=None, help="crop+flip (CIFAR default)")
    aug.add_argument("--no-augment", dest="augment", action="store_false", help="no augmentation (default elsewhere)")
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


def _add_variant_arguments(a: Callable[..., None]) -> None:
    """The flags of late SAM, SAM-ON and bf16 autocast (``a``: :func:`_add_train_arguments`'s ``add_argument``)."""
    a(
        "--sam-start",
        type=float,
        default=None,
        metavar="S",
        help="late SAM (Zhou et al. 2025): plain SGD steps first, SAM after; S in (0, 1) is a fraction of the run's "
        "steps (0.5: SAM from half-way), a whole S >= 1 a number of steps (default: SAM from the first step)",
    )
    a(
        "--sam-on",
        choices=SAM_ON,
        default=None,
        help="which parameters SAM perturbs: all (default), or norm: SAM-ON (Mueller et al. 2023), only the "
        "normalization layers' weights and biases, with the norm over those alone; sam, usam and unified only",
    )
    a(
        "--precision",
        choices=PRECISIONS,
        default=TrainConfig().precision,
        help="fp32, or bf16: bfloat16 autocast around the forward passes (float32 weights, gradients and norms; no "
        "scaler; evaluation in fp32) (default: %(default)s)",
    )


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
    cfg.validate()  # bad flags before any folder is made
    main_rank = int(os.environ.get("RANK", "0")) == 0
    assert cfg.out is not None  # train_config names the folder when --out is not given
    out = ensure_writable(Path(cfg.out))
    if main_rank:
        Records(cfg.out).claim()  # the run's folder, or refused, before the lock file is made in it
    # a second `samkit train` on the same --out is refused at once (the lock dies with its process)
    with folder_lock(out) if main_rank else contextlib.nullcontext():
        result = train(cfg, resume=args.resume)
    if main_rank:
        print(
            f"{result['status']}: final test accuracy {result.get('final_test_acc')}, "
            f"{result['seconds']:.1f} s; wrote {cfg.out}/metrics.csv, checkpoint.pt, summary.json"
        )
    return 0


def _print_claims(result: ExperimentResult) -> None:
    for c in result.claims:
        print(f"  [{c.verdict}] {c.id}: {c.statement} — measured {c.measured}")


class _Presets:
    """``samkit run``'s ``--preset`` choices: the shared presets, then those only some experiments have (E7's
    ``medium``; an experiment without the preset asked for refuses it by name). Computed on first use, so building
    the parser imports no experiment (every command builds it)."""

    @functools.cached_property
    def names(self) -> tuple[str, ...]:
        extra = {p for n in names() for p in get(n).presets if p not in PRESETS}
        return (*PRESETS, *sorted(extra))

    def __contains__(self, preset: object) -> bool:
        return preset in self.names

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)


class _PresetAction(argparse.Action):
    """Stores ``--preset``; its help lists the presets and the experiments that have each extra one, computed when
    shown (the metavar is fixed: argparse would otherwise list the choices when the parser is built)."""

    @property  # type: ignore[override]
    def help(self) -> str:
        extra = [p for p in self.choices or () if p not in PRESETS]
        owners = {p: [n for n in names() if p in get(n).presets] for p in extra}
        return f"the size of every experiment: {', '.join(self.choices or ())}" + "".join(
            f"; {p}: {', '.join(owners[p])} only" for p in extra
        )

    @help.setter
    def help(self, value: str | None) -> None:
        pass  # computed

    def __call__(self, parser: argparse.ArgumentParser, namespace: Any, values: Any, option: str | None = None) -> None:
        setattr(namespace, self.dest, values)


def _run(
    experiments: Sequence[str],
    preset: str,
    out: Path,
    overrides: Sequence[str],
    progress: bool,
    args: argparse.Namespace,
) -> int:
    _warn_repeated(overrides)
    # every override of every experiment, and the GPU request, checked before any work
    items = make_plan([get(n) for n in experiments], preset, overrides, device=args.device)
    plan = Plan(tuple(items), args.gpus_per_unit)
    if args.executor != "ray":  # a Ray cluster's workers may have GPUs this machine has not
        plan.check_local_devices()
    ensure_writable(out)
    t0 = time.perf_counter()

    def show(res: ExperimentResult) -> None:
        run = res["run"]
        compute = run.get("unit_seconds") or 0.0
        done = f"done after {run['seconds']:.1f} s, {run['units']} units ({compute:.1f} s of compute)"
        print(f"{res['experiment']} ({res['title']}): {done}, {run['units_cached']} cached", flush=True)
        _print_claims(res)

    with _executor(args) as executor:
        results, failures = run_experiments(plan, out, executor, progress=progress, on_result=show)
    for f in failures:
        sys.stderr.write(f"samkit: error: {f.reason}\n")
    paths = write_report(out)
    tally = Tally.of(results)
    not_run = f"; {len(failures)} experiment(s) did not finish" if failures else ""
    took = time.perf_counter() - t0
    print(f"{tally.passed}/{tally.total} claims PASS in {took:.1f} s{not_run}; report: {paths[0]} and {paths[1]}")
    return tally.exit_code(failures)


def _warn_repeated(overrides: Sequence[str]) -> None:
    """Warn about a ``--set`` key given twice (the last value wins, as in every other tool, but say so)."""
    seen: dict[str, str] = {}
    for item in overrides:
        key, _, value = item.partition("=")
        key = key.strip()
        if key in seen and seen[key] != value:
            sys.stderr.write(
                f"samkit: warning: --set {key} given twice ({seen[key]!r}, then {value!r}): using {value!r}\n"
            )
        seen[key] = value


def _report(directory: Path) -> int:
    if not directory.is_dir():
        raise ConfigError(f"no such results directory {str(directory)!r}")
    claim_results_folder(ensure_writable(directory))  # never overwrite a README.md samkit did not write
    if not experiment_dirs(directory):
        raise ConfigError(f"{str(directory)!r} holds no experiment results (run `samkit reproduce --out DIR` first)")
    # redraw every experiment that checks out; links, locks and damage are left to collect(), which names them
    errors, warnings = rejudge(directory)
    for w in warnings:
        sys.stderr.write(f"samkit: warning: {w}\n")
    results, problems = collect(directory, errors)
    for p in problems:
        sys.stderr.write(f"samkit: error: {p.reason}\n")
    paths = write_report(directory, results, problems)
    tally = Tally.of(results)
    not_run = f"; {len(problems)} experiment(s) did not run, did not finish or are damaged" if problems else ""
    print(f"{tally.passed}/{tally.total} claims PASS{not_run}; report: {paths[0]} and {paths[1]}")
    return tally.exit_code(problems)


def _sweep(args: argparse.Namespace) -> int:
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {k: (v if isinstance(v, list) else [v]) for k, v in vars(args).items() if k in fields and k != "out"}
    grid = {k: v for k, v in values.items() if len(v) > 1}
    fixed = {k: v[0] for k, v in values.items() if len(v) == 1}
    if not grid:
        raise ConfigError("samkit sweep needs at least one flag with several values, e.g. --rho 0.01,0.1,1")
    runs = []
    for point in expand_grid(grid):
        cfg = TrainConfig(**fixed, **point, progress=False, quiet=True)
        runs.append(SweepRun(run_name(point), point, cfg))
    out = claim_sweep_folder(ensure_writable(Path(args.out)))
    with folder_lock(out), _executor(args) as executor:
        rows = run_sweep(runs, out, executor, progress=not args.no_progress, gpus_per_run=args.gpus_per_unit)
    bad = [r for r in rows if r["status"] == "failed"]
    print(f"{len(rows)} runs ({len(bad)} failed); wrote {out / 'sweep.csv'} and {out / 'sweep.png'}")
    return 3 if bad else 0


def _prog(args: argparse.Namespace) -> str:
    return "samkit train" if args.command == "train" else "samkit"


def _list(experiment: str | None) -> int:
    if experiment is not None:
        print(describe(get(experiment)))
        return 0
    for n in names():
        e = get(n)
        print(f"{e.name:4s} {e.title} — {e.summary} (presets: {', '.join(e.presets)})")
    print("`samkit list EXP` shows the config keys of EXP (what `samkit run EXP --set KEY=VALUE` accepts).")
    return 0


def _os_error(err: OSError) -> str:
    """An OSError in one line: what went wrong and the file it concerns."""
    reason = err.strerror or str(err)
    if err.filename is None:
        return reason
    names = repr(str(err.filename)) + (f" -> {str(err.filename2)!r}" if err.filename2 is not None else "")
    return f"{reason}: {names}"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``samkit`` console script; returns the exit code (see ``samkit --help``).

    Every error is one line on stderr: ``samkit: error: ...`` (``samkit train: error: ...`` for ``samkit
    train``), without a traceback. Set ``SAMKIT_TRACEBACK=1`` to see the traceback of a runtime error.
    """
    _safe_streams()
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as done:  # a usage error (already printed), --help or --version
        return done.code if isinstance(done.code, int) else 2
    try:
        if args.command == "list":
            return _list(args.experiment)
        if args.command == "run":
            return _run([args.experiment], args.preset, Path(args.out), args.overrides, not args.no_progress, args)
        if args.command == "reproduce":
            return _run(names(), args.preset, Path(args.out), [], not args.no_progress, args)
        if args.command == "sweep":
            return _sweep(args)
        if args.command == "report":
            return _report(Path(args.dir))
        if args.command == "train":
            return _train(args)
    except (UnitError, DamagedDataError) as err:
        return _fail(args, str(err), 3)
    except UnicodeError as err:  # a file that is not the text samkit wrote: damaged, not a usage error
        return _fail(args, f"a file could not be decoded ({err})", 3)
    except ValueError as err:  # ConfigError, TrainError, DataError, and a bad value caught deeper down
        return _fail(args, str(err), 2)
    except OSError as err:  # a file that could not be written or read mid-run (disk full, permissions, ...)
        return _fail(args, _os_error(err), 3)
    except KeyboardInterrupt:
        how = "with --resume to continue" if args.command == "train" else "to resume from the finished units"
        sys.stderr.write(f"{_prog(args)}: interrupted; rerun the same command {how}\n")
        return 130
    except MemoryError:
        return _fail(args, "out of memory: choose smaller sizes (fewer grid points, a smaller batch or model)", 3)
    except Exception as err:  # noqa: BLE001 - an unexpected failure is a runtime error (3), never a claim (1)
        return _fail(args, f"unexpected {type(err).__name__}: {err} (SAMKIT_TRACEBACK=1 shows where)", 3)
    return 2


def _fail(args: argparse.Namespace, message: str, code: int) -> int:
    """Print the error as one line (after its traceback under ``SAMKIT_TRACEBACK=1``) and return ``code``: the exit
    code means the same with or without the traceback."""
    if os.environ.get("SAMKIT_TRACEBACK"):
        traceback.print_exc()
    first = message.strip().splitlines()[0] if message.strip() else "unknown error"
    sys.stderr.write(f"{_prog(args)}: error: {first}\n")
    return code


def _safe_streams() -> None:
    """Under a locale whose encoding cannot write ρ, λ or ‖·‖ (``LANG=C`` with an ASCII encoding), print them
    escaped instead of crashing after the work is done."""
    for stream in (sys.stdout, sys.stderr):
        enc = (getattr(stream, "encoding", None) or "").lower().replace("-", "")
        if enc not in ("utf8", "utf16", "utf32") and hasattr(stream, "reconfigure"):
            with contextlib.suppress(ValueError, OSError):
                stream.reconfigure(errors="backslashreplace")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
