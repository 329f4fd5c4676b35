"""The ``samkit`` command line.

Commands::

    samkit list                                         the experiments and their presets
    samkit run EXP [--preset P] [--out DIR] [--set key=value ...]
    samkit reproduce [--preset P] [--out DIR]           every experiment, then the report
    samkit report DIR                                   redraw figures and rewrite the report from saved data
    samkit train [--dataset D --model M --optimizer O --rho R ...]   train one model (see samkit.train)

Results are cached per work unit (a hash of its parameters), so a rerun skips finished work and an
interrupted run resumes. Bad input (unknown experiment, unknown key, a value of the wrong type, an
unwritable output directory) prints one line to stderr and exits with code 2. ``run`` and
``reproduce`` exit with code 1 when a claim FAILs, 0 when every claim PASSes.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main", "build_parser"]


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"samkit: error: {message}\n")
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``samkit``."""
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
    from samkit.train import add_parser as add_train_parser  # `samkit train` (see samkit.train)

    add_train_parser(sub)
    return p


def _print_claims(result: dict) -> None:
    for c in result["claims"]:
        print(f"  [{'PASS' if c['passed'] else 'FAIL'}] {c['id']}: {c['statement']} — measured {c['measured']}")


def _run(names: Sequence[str], preset: str, out: Path, overrides: Sequence[str], progress: bool) -> int:
    from samkit.experiments import get
    from samkit.experiments.base import PRESETS, ConfigError
    from samkit.experiments.runner import ensure_writable, run_experiment
    from samkit.report import summary, write_report

    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r} (choose from {', '.join(PRESETS)})")
    exps = [get(n) for n in names]
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
    from samkit.experiments import get
    from samkit.experiments.base import ConfigError
    from samkit.experiments.runner import ensure_writable, finalize, read_json
    from samkit.report import summary, write_report

    if not directory.is_dir():
        raise ConfigError(f"no such results directory {str(directory)!r}")
    ensure_writable(directory)
    dirs = sorted(p.parent for p in directory.glob("*/config.json"))
    if not dirs:
        raise ConfigError(f"{str(directory)!r} holds no experiment results (run `samkit reproduce --out DIR` first)")
    results = []
    for d in dirs:
        name = read_json(d / "config.json")["experiment"]
        results.append(finalize(get(name), d))
    paths = write_report(directory)
    passed, total = summary(results)
    print(f"{passed}/{total} claims PASS; report: {paths[0]} and {paths[1]}")
    return 0 if passed == total else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``samkit`` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    from samkit.experiments.base import ConfigError

    try:
        if args.command == "list":
            from samkit.experiments import get, names

            for n in names():
                e = get(n)
                print(f"{e.name:4s} {e.title} — {e.summary} (presets: {', '.join(e.presets)})")
            return 0
        if args.command == "run":
            return _run([args.experiment], args.preset, Path(args.out), args.overrides, not args.no_progress)
        if args.command == "reproduce":
            from samkit.experiments import names

            return _run(names(), args.preset, Path(args.out), [], not args.no_progress)
        if args.command == "report":
            return _report(Path(args.dir))
        if args.command == "train":
            from samkit.train import run_args

            return run_args(args)
    except ConfigError as err:
        sys.stderr.write(f"samkit: error: {err}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("samkit: interrupted; rerun the same command to resume from the finished units\n")
        return 130
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
