"""Running an experiment: cached, resumable work units, atomic writes, provenance, claims and figures.

Layout of an experiment's output directory ``OUT/<name>/``::

    units/KEY-HASH.json one file per finished work unit (HASH covers the experiment, its version, the source code
                        that computes it and the unit's parameters) with the sha256 of its result: a rerun skips
                        every unit whose file exists and whose result matches its checksum (an edited one is
                        recomputed, and the run says so), so an interrupted run resumes where it stopped
    data/TABLE.csv     tidy tables built from the unit results
    config.json        written once every unit is in: the resolved config, its hash, the preset, the overrides
                        and the row count and sha256 of each table — the commit point that ties the data to
                        the config that produced it (a failed run leaves the previous config and data intact).
                        Whoever reads it re-derives the config from (preset, overrides) through the experiment's
                        schema and refuses the folder unless both agree (:func:`read_config`): an edited
                        threshold cannot turn a FAIL into a PASS
    figures/*.png      figures drawn from the CSV files (read back from disk, checked against config.json)
    result.json        claims with verdicts, figures with captions, provenance, timings
    failure.json       only when the last run of this experiment did not finish (why)
    .lock              held while a run writes here (a second run on the same folder is refused)

Every write goes to a temporary file in the same directory and is renamed into place, so a killed run
never leaves a half-written file behind. Units run wherever the executor puts them
(:mod:`samkit.experiments.executors`); only this process writes.

This module schedules a run; the other concerns have a module each: :mod:`~samkit.experiments.plan` (what a run
will do, checked before any work), :mod:`~samkit.experiments.store` (the files above, written atomically and read
back checked), :mod:`~samkit.experiments.locking` (one run per folder), :mod:`~samkit.experiments.provenance`
(versions, commit, the units' cache keys), :mod:`~samkit.experiments.judging` (claims and figures from the files)
and :mod:`~samkit.experiments.results` (the result model the report and the CLI share). The names they export are
importable from here too.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from samkit._progress import Progress, slots
from samkit.experiments.base import ConfigError, Experiment, Unit, stable_hash
from samkit.experiments.executors import Executor, InlineExecutor, Outcome, Task
from samkit.experiments.judging import finalize
from samkit.experiments.locking import LockedError, folder_lock
from samkit.experiments.plan import Plan, PlanItem, check_gpu_request, check_sizes
from samkit.experiments.provenance import code_fingerprint, provenance, unit_hash
from samkit.experiments.results import ExperimentResult, Failure, Problem
from samkit.experiments.store import (
    STAGING,
    DamagedDataError,
    TamperedConfigError,
    atomic_write_text,
    claim_results_folder,
    csv_text,
    ensure_writable,
    load_tables,
    load_unit,
    read_config,
    read_json,
    result_digest,
    safe_name,
    switch_over,
    verify_config,
    write_csv,
    write_failure,
    write_json,
)

__all__ = [
    "run_experiment",
    "run_experiments",
    "UnitError",
    # re-exported from the modules that own them
    "Plan",
    "PlanItem",
    "check_gpu_request",
    "check_sizes",
    "atomic_write_text",
    "write_json",
    "write_csv",
    "read_json",
    "provenance",
    "unit_hash",
    "ensure_writable",
    "finalize",
    "load_tables",
    "read_config",
    "verify_config",
    "code_fingerprint",
    "folder_lock",
    "safe_name",
    "csv_text",
    "ExperimentResult",
    "Failure",
    "Problem",
    "LockedError",
    "DamagedDataError",
    "TamperedConfigError",
    "result_digest",
    "claim_results_folder",
]


class UnitError(RuntimeError):
    """One or more units of an experiment raised (their errors name the experiment, unit and parameters)."""


@dataclass
class _Running:
    """One experiment of a run while its units come in."""

    item: PlanItem
    exp_dir: Path
    units: list[Unit] = field(default_factory=list)
    results: dict[str, Any] = field(default_factory=dict)
    remaining: int = 0
    cached: int = 0
    errors: list[str] = field(default_factory=list)
    t0: float = 0.0
    unit_seconds: float = 0.0  # the compute time of the units run now (not the cached ones), summed over workers

    @property
    def exp(self) -> Experiment:
        return self.item.exp


@dataclass(frozen=True)
class _Pending:
    """A unit sent to the executor: whose it is and where its record goes."""

    task: Task
    run: _Running
    unit: Unit
    path: Path
    hash: str


def run_experiment(
    exp: Experiment,
    preset: str = "quick",
    out: Path | str = "results",
    overrides: Iterable[str] = (),
    *,
    progress: bool = True,
    config: Mapping[str, Any] | None = None,
    on_unit: Callable[[str, bool], None] | None = None,
    executor: Executor | None = None,
) -> ExperimentResult:
    """Run ``exp`` (resuming from cached units), write its tables, then :func:`finalize` it.

    ``on_unit(key, cached)`` is called after each unit (used by tests and progress reporting). ``executor`` says
    where units run (default: this process). ``config``, when given, must be the config that ``preset`` with
    ``overrides`` gives (every reader re-derives it from those: :func:`read_config`), else :class:`ConfigError`.
    Raises :class:`UnitError` when a unit raised (after the other units finished and were saved), and the
    prerequisite's error when one is missing.
    """
    item = PlanItem.of(exp, preset, overrides)
    if config is not None and stable_hash(dict(config)) != stable_hash(item.config):
        raise ConfigError(
            f"{exp.name}: the config given is not the one preset {preset!r} with overrides {list(item.overrides)} "
            "gives; pass the differences as overrides (results are checked against their preset and overrides)"
        )
    results, failures = run_experiments([item], out, executor, progress=progress, on_unit=on_unit)
    if failures:
        f = failures[0]
        if f.kind == "missing":
            raise ConfigError(f.reason)
        raise UnitError(f.reason)
    return results[0]


def run_experiments(
    plan: Plan | Sequence[PlanItem],
    out: Path | str,
    executor: Executor | None = None,
    *,
    progress: bool = True,
    on_unit: Callable[[str, bool], None] | None = None,
    on_result: Callable[[ExperimentResult], None] | None = None,
) -> tuple[list[ExperimentResult], list[Problem]]:
    """Run several experiments through one executor, so the units of all of them share the workers.

    ``plan`` is a :class:`Plan` (or its items, asking for no GPUs). Units already on disk are reused. The driver
    (this process) alone writes: each unit's file as soon as it comes back (in whatever order), then, once every
    unit of an experiment is in, its tables, its ``config.json`` (the commit point: the config with the row counts
    and checksums of the tables it produced) and its ``result.json``. An experiment whose prerequisites are missing
    (:meth:`Experiment.missing`) or one of whose units raised is reported as a :class:`Problem` (and
    ``failure.json`` in its folder); the other experiments still finish. Ctrl-C stops the workers; finished units
    are kept, so a rerun resumes. :attr:`Plan.gpus_per_unit` is added to the resource requests of the units of
    experiments that train on a torch device (:attr:`Experiment.device_units`), for executors that schedule GPUs.
    """
    plan = plan if isinstance(plan, Plan) else Plan(tuple(plan))
    out = claim_results_folder(ensure_writable(Path(out)))
    executor = executor or InlineExecutor()
    runs: list[_Running] = []
    failures: list[Problem] = []
    for item in plan.items:
        run = _Running(item, out / item.exp.name)
        missing = item.exp.missing(item.config)
        if missing:
            failures.append(Problem(item.exp.name, f"{item.exp.name} did not run: {missing}", "missing"))
            write_failure(run.exp_dir, failures[-1])
        else:
            runs.append(run)
    results: list[ExperimentResult] = []

    def done(run: _Running) -> None:
        _complete(run, results, failures, on_result)

    with contextlib.ExitStack() as stack:
        for run in runs:
            stack.enter_context(folder_lock(run.exp_dir))
        pending = {id(p.task): p for run in runs for p in _tasks(run, plan.gpus_per_unit, on_unit)}
        tasks = [p.task for p in pending.values()]
        bar = None
        if progress and tasks:
            bar = Progress(tasks, ", ".join(r.exp.name for r in runs if r.remaining), slots(executor))
        provs = {run.exp.name: provenance(run.item.config) for run in runs}
        try:
            for run in runs:
                if run.remaining == 0:
                    done(run)
            for outcome in executor.run(tasks):
                p = pending[id(outcome.task)]
                _record(p, outcome, provs[p.run.exp.name], bar)
                if on_unit is not None and outcome.ok:
                    on_unit(p.unit.key, False)
                if p.run.remaining == 0:
                    done(p.run)
        finally:
            if bar is not None:
                bar.close()
    order = {run.exp.name: i for i, run in enumerate(runs)}
    results.sort(key=lambda r: order[r["experiment"]])
    return results, failures


def _tasks(run: _Running, gpus_per_unit: float, on_unit: Callable[[str, bool], None] | None) -> list[_Pending]:
    """The units of ``run`` that are not on disk yet, as tasks for the executor (the cached ones are taken in)."""
    run.t0 = time.perf_counter()
    run.units = run.exp.units(run.item.config)
    check_sizes(run.exp.name, run.units)
    keys = [u.key for u in run.units]
    if len(set(keys)) != len(keys):
        raise RuntimeError(f"{run.exp.name}: duplicate unit keys")
    out = []
    for u in run.units:
        h = unit_hash(run.exp, u.params)
        path = run.exp_dir / "units" / f"{safe_name(u.key)}-{h}.json"
        hit, res, why = load_unit(path, h)
        if why is not None:
            print(f"samkit: {run.exp.name}: recomputing unit {u.key}: {str(path)!r}: {why}", file=sys.stderr)
        if hit:
            run.results[u.key] = res
            run.cached += 1
            if on_unit is not None:
                on_unit(u.key, True)
            continue
        needs = dict(run.exp.resources(u.params))
        if gpus_per_unit and run.exp.device_units:
            needs["num_gpus"] = gpus_per_unit
        task = Task(run.exp.name, u.key, u.params, run.exp.run_unit, needs)
        out.append(_Pending(task, run, u, path, h))
        run.remaining += 1
    return out


def _record(p: _Pending, outcome: Outcome, prov: Mapping[str, Any], bar: Progress | None) -> None:
    """Save a unit that came back (its record, with its result's checksum), or note its error."""
    run = p.run
    if outcome.ok:
        record = {
            "experiment": run.exp.name,
            "key": p.unit.key,
            "hash": p.hash,
            "params": p.unit.params,
            "seconds": outcome.seconds,
            "provenance": prov,
            "result": outcome.result,
            "result_sha256": result_digest(outcome.result),
        }
        write_json(p.path, record)
        run.results[p.unit.key] = outcome.result
        run.unit_seconds += outcome.seconds
    else:
        run.errors.append(outcome.error or "unknown error")
        _log(bar, f"samkit: error: {outcome.error.splitlines()[0] if outcome.error else ''}")
    run.remaining -= 1
    if bar is not None:
        bar.done(outcome.task)


def _log(bar: Progress | None, text: str) -> None:
    if bar is not None:
        bar.write(text)
    else:
        print(text, file=sys.stderr)


def _complete(
    run: _Running,
    results: list[ExperimentResult],
    failures: list[Problem],
    on_result: Callable[[ExperimentResult], None] | None,
) -> None:
    """Every unit of ``run`` is in: commit its tables and config, then judge and draw from the files on disk."""
    if run.errors:
        n = len(run.errors)
        reason = f"{run.exp.name}: {n} unit{'s' if n > 1 else ''} failed; the first: {run.errors[0].splitlines()[0]}"
        failures.append(Problem(run.exp.name, reason, "error"))
        write_failure(run.exp_dir, failures[-1])
        return
    ordered = {u.key: run.results[u.key] for u in run.units}  # unit order, not completion order
    # Everything new is written beside the old results, in EXP/.commit/, and switched over only once it is all
    # there: a failed write (disk full, a quota, a crash) leaves the previous results as they were, judged as before.
    new = run.exp_dir / STAGING
    _stage(run.item, run.exp.tables(run.item.config, ordered), new)
    run_info = {
        "units": len(run.units),
        "units_cached": run.cached,
        "seconds": round(time.perf_counter() - run.t0, 2),
        "unit_seconds": round(run.unit_seconds, 2),
    }
    res = finalize(run.exp, new, run_info=run_info)
    switch_over(new, run.exp_dir)
    with contextlib.suppress(FileNotFoundError):
        (run.exp_dir / "failure.json").unlink()
    results.append(res)
    if on_result is not None:
        on_result(res)


def _stage(item: PlanItem, tables: Mapping[str, list[dict[str, Any]]], new: Path) -> None:
    """Write the tables and ``config.json`` (the config with the row count and sha256 of each table) into ``new``."""
    if new.exists():
        shutil.rmtree(new)
    manifest = {}
    for name, rows in tables.items():
        text = csv_text(rows)
        atomic_write_text(new / "data" / f"{safe_name(name)}.csv", text)
        manifest[f"{safe_name(name)}.csv"] = {"rows": len(rows), "sha256": hashlib.sha256(text.encode()).hexdigest()}
    meta = {
        "experiment": item.exp.name,
        "preset": item.preset,
        "overrides": list(item.overrides),
        "config": item.config,
        "config_hash": stable_hash(item.config),
        "tables": manifest,
    }
    write_json(new / "config.json", meta)
