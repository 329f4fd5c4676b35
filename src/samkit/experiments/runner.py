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
"""

from __future__ import annotations

import ast
import contextlib
import csv
import fcntl
import hashlib
import importlib.util
import inspect
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from samkit._io import atomic_write_text, claim_folder, csv_text, file_head, open_regular, write_csv
from samkit._progress import Progress, slots
from samkit.experiments.base import (
    Claim,
    ConfigError,
    Experiment,
    Figure,
    Table,
    Unit,
    _jsonable,
    read_table,
    stable_hash,
    table_from_text,
)
from samkit.experiments.executors import Executor, InlineExecutor, Task

__all__ = [
    "atomic_write_text",
    "write_json",
    "write_csv",
    "read_json",
    "provenance",
    "unit_hash",
    "ensure_writable",
    "run_experiment",
    "run_experiments",
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
    "UnitError",
    "LockedError",
    "DamagedDataError",
    "result_digest",
    "claim_results_folder",
]


def write_json(path: Path, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON (numpy values and non-finite floats made JSON-safe)."""
    atomic_write_text(path, json.dumps(_jsonable(obj), indent=1, sort_keys=False) + "\n")


def read_json(path: Path) -> Any:
    """Read a JSON file; a missing, unreadable or damaged one is a :class:`ConfigError` naming the file."""
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{str(path)!r} does not exist") from None
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ConfigError(f"{str(path)!r} is not readable JSON ({type(err).__name__}: {err})") from None


def _git_commit(module: str | Path = __file__) -> str | None:
    """The commit of the samkit checkout this module runs from (``-dirty`` with local changes), or None — also when
    the installed package merely lies inside some other repository (a virtualenv in a project): then this file is
    not tracked there and the commit would be that project's, not samkit's."""
    here = Path(module).resolve().parent
    try:
        subprocess.run(
            ["git", "ls-files", "--error-unmatch", Path(module).name],
            cwd=here,
            capture_output=True,
            timeout=5,
            check=True,
        )
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("-dirty" if dirty else "") if commit else None


_GIT_CACHE: dict[str, str | None] = {}


def provenance(config: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Versions (samkit, torch, numpy, python), the git commit when available, the seed and the config."""
    import numpy
    import torch

    import samkit

    if "commit" not in _GIT_CACHE:
        _GIT_CACHE["commit"] = _git_commit()
    out: dict[str, Any] = {
        "samkit": samkit.__version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git_commit": _GIT_CACHE["commit"],
    }
    if config is not None:
        out["seed"] = config.get("seed")
        out["config"] = dict(config)
        out["config_hash"] = stable_hash(dict(config))
    return out


def unit_hash(exp: Experiment, params: Mapping[str, Any]) -> str:
    """The cache key of a unit: the experiment's name, version and code fingerprint, and the unit's parameters.

    The fingerprint (:func:`code_fingerprint`) covers the source of the experiment's module and of every samkit
    module it imports, so editing the code that computes a unit recomputes it instead of reusing a stale result.
    """
    return stable_hash(
        {"experiment": exp.name, "version": exp.version, "code": code_fingerprint(exp), "params": dict(params)}
    )


#: Modules that orchestrate or present results but cannot change what a unit computes.
_NOT_COMPUTING = frozenset(
    {
        "samkit.experiments.runner",
        "samkit.experiments.executors",
        "samkit.experiments.plotting",
        "samkit.experiments.stats",
        "samkit.report",
        "samkit.cli",
        "samkit._io",
    }
)
_FINGERPRINTS: dict[str, str] = {}


def _samkit_imports(tree: ast.AST, module: str | None) -> set[str]:
    """The ``samkit.*`` modules a parsed module imports (absolute and relative imports, ``from pkg import mod``)."""
    found: set[str] = set()
    pkg = module.rsplit(".", 1)[0] if module else ""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "samkit")
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)]
                base = ".".join(p for p in parts + ([base] if base else []) if p)
            if base.split(".")[0] != "samkit":
                continue
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
    return found


def _module_file(name: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None
    return Path(spec.origin)


def _fingerprint_files(exp: Experiment) -> list[Path]:
    """The source files whose code computes ``exp``'s units (see :func:`code_fingerprint`), in a stable order."""
    cls = type(exp)
    # the module that defines run_unit (the class's own, unless the class takes run_unit from a module of its own)
    run_unit = getattr(cls.run_unit, "__func__", cls.run_unit)
    module = getattr(run_unit, "__module__", None) or cls.__module__
    if module == "samkit.experiments.base":
        module = cls.__module__
    todo: list[tuple[str | None, Path]] = [(module, Path(inspect.getfile(sys.modules[module])))]
    seen_mods: set[str] = set()
    out: list[Path] = []
    while todo:
        mod, path = todo.pop()
        if path in out:
            continue
        out.append(path)
        for dep in sorted(_samkit_imports(ast.parse(path.read_bytes()), mod)):
            if dep in seen_mods or dep in _NOT_COMPUTING:
                continue
            seen_mods.add(dep)
            f = _module_file(dep)
            if f is not None:
                todo.append((dep, f))
    return out


def code_fingerprint(exp: Experiment) -> str:
    """A hash of the source code that computes ``exp``'s units.

    The file that defines the experiment's ``run_unit`` (its class's module, or the module a package experiment
    takes ``run_unit`` from, e.g. :mod:`samkit.experiments.e7.runs`: then editing its claims or figures keeps the
    cache) and, transitively, every ``samkit`` module it imports (found by reading the import statements), except
    the modules that only orchestrate or present (:data:`_NOT_COMPUTING`). Computed once per experiment class and
    process.
    """
    cls = type(exp)
    ident = f"{cls.__module__}.{cls.__qualname__}"
    if ident not in _FINGERPRINTS:
        digest = hashlib.sha256()
        for path in _fingerprint_files(exp):
            digest.update(path.name.encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
        _FINGERPRINTS[ident] = digest.hexdigest()[:16]
    return _FINGERPRINTS[ident]


def safe_name(key: str) -> str:
    """``key`` made safe as a file name inside the output folder (no separators, no leading dot).

    >>> safe_name("rho=0.1/../x")
    'rho=0.1_.._x'
    """
    name = re.sub(r"[^A-Za-z0-9._=+,-]", "_", str(key)).lstrip(".")
    return name[:120] or "_"


#: The system's limit on a path's length, and the longest path samkit writes inside an output directory (an
#: experiment folder, ``units/``, a unit file named by its key — at most 120 characters — and its hash).
_PATH_MAX = os.pathconf("/", "PC_PATH_MAX") if hasattr(os, "pathconf") else 4096
_LONGEST_INSIDE = 256


def ensure_writable(out: Path) -> Path:
    """Create ``out`` if needed and check that files can be written there; raise :class:`ConfigError` if not."""
    out = Path(out)
    longest = len(os.fsencode(os.path.abspath(out))) + _LONGEST_INSIDE
    if longest > _PATH_MAX:
        raise ConfigError(
            f"the output directory's path is too long ({len(os.fsencode(os.path.abspath(out)))} bytes): the files "
            f"samkit writes inside it would pass the system's limit of {_PATH_MAX} bytes; choose a shorter path"
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=out, prefix=".probe.")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        reason = err.strerror or str(err)
        raise ConfigError(f"cannot write to output directory {str(out)!r}: {reason}") from None
    return out


class ExperimentResult(dict):
    """The content of ``result.json`` (a dict) with typed accessors for claims and figures."""

    @property
    def claims(self) -> list[Claim]:
        fields = Claim.__dataclass_fields__
        return [Claim(**{k: v for k, v in c.items() if k in fields}) for c in self["claims"]]

    @property
    def figures(self) -> list[Figure]:
        return [Figure(**f) for f in self["figures"]]


class LockedError(ConfigError):
    """Another process is writing to the same experiment folder."""


@contextlib.contextmanager
def folder_lock(exp_dir: Path) -> Iterator[None]:
    """Hold ``EXP_DIR/.lock`` (an advisory ``flock``) for the duration of a run.

    A second ``samkit run`` on the same folder gets a :class:`LockedError` at once instead of redoing the work.
    The kernel drops the lock when its process dies, so a killed run never leaves a lock that blocks.
    """
    exp_dir.mkdir(parents=True, exist_ok=True)
    path = exp_dir / ".lock"
    # never through a link: a planted `.lock -> ~/notes.txt` must not make samkit truncate the user's file
    fh = os.fdopen(open_regular(path, os.O_RDWR | os.O_CREAT), "r+")
    try:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            raise LockedError(
                f"{str(exp_dir)!r} is in use by {holder}; wait for it to finish or choose another --out"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"samkit pid {os.getpid()} on {platform.node()}")
        fh.flush()
        yield
    finally:
        fh.close()  # closing releases the flock


class UnitError(RuntimeError):
    """One or more units of an experiment raised (their errors name the experiment, unit and parameters)."""


@dataclass
class Failure:
    """An experiment that did not produce a result in this run, and why."""

    experiment: str
    reason: str
    kind: str = "error"  # "error" (a unit raised) | "missing" (a prerequisite is missing) | "damaged"

    def to_dict(self) -> dict[str, str]:
        return {"experiment": self.experiment, "reason": self.reason, "kind": self.kind}


@dataclass
class Planned:
    """One experiment of a run: its resolved config and where it writes."""

    exp: Experiment
    preset: str
    config: dict[str, Any]
    overrides: list[str]
    exp_dir: Path
    units: list[Unit] = field(default_factory=list)
    results: dict[str, Any] = field(default_factory=dict)
    remaining: int = 0
    cached: int = 0
    errors: list[str] = field(default_factory=list)
    t0: float = 0.0
    unit_seconds: float = 0.0  # the compute time of the units run now (not the cached ones), summed over workers


def result_digest(result: Any) -> str:
    """The sha256 of a unit's result as JSON (keys sorted, compact): recorded in its file, checked on load.

    >>> result_digest({"b": [1.0, float("nan")], "a": 1}) == result_digest({"a": 1, "b": [1.0, float("nan")]})
    True
    """
    text = json.dumps(_jsonable(result), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _load_cached(path: Path, h: str) -> tuple[bool, Any, str | None]:
    """``(hit, result, why)``: a unit file's result when it is complete, its hash matches and its result matches the
    checksum recorded with it; anything else is a cache miss (``why`` says why when the file exists but cannot be
    used, so the run can say that it recomputes it)."""
    if not path.exists():
        return False, None, None
    try:
        stored = read_json(path)
    except (OSError, ValueError):
        return False, None, "it is not readable JSON"
    if not isinstance(stored, dict) or stored.get("hash") != h or not isinstance(stored.get("result"), dict):
        return False, None, "it is not a complete unit record"
    if stored.get("result_sha256") != result_digest(stored["result"]):
        return False, None, "its result does not match the sha256 recorded with it (edited?)"
    return True, stored["result"], None


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
    overrides = list(overrides)
    cfg = exp.config(preset, overrides)
    if config is not None and stable_hash(dict(config)) != stable_hash(cfg):
        raise ConfigError(
            f"{exp.name}: the config given is not the one preset {preset!r} with overrides {overrides} gives; "
            "pass the differences as overrides (results are checked against their preset and overrides)"
        )
    results, failures = run_experiments(
        [(exp, preset, overrides, cfg)], out, executor, progress=progress, on_unit=on_unit
    )
    if failures:
        f = failures[0]
        if f.kind == "missing":
            raise ConfigError(f.reason)
        raise UnitError(f.reason)
    return results[0]


#: The most values one list of a unit's parameters may hold, and the most (η, ρ, …) combinations the two longest
#: lists of a unit may span: 66× the largest of any built-in preset (150 values, a 150 × 101 grid). Beyond them the
#: memory a unit needs (every recorded step of every combination, and the tables built from them) is out of reach
#: of any one machine: refused before any work instead of failing after minutes with tens of gigabytes allocated.
MAX_LIST = 10_000
MAX_GRID = 1_000_000


def check_sizes(name: str, units: Sequence[Unit]) -> None:
    """Refuse units whose grids are obviously out of memory's reach (:data:`MAX_LIST`, :data:`MAX_GRID`).

    >>> check_sizes("E4", [Unit("u", {"rhos": list(range(20_000))})])
    Traceback (most recent call last):
    ...
    samkit.experiments.base.ConfigError: E4: unit 'u' would take 20000 values of rhos; at most 10000 per list (and 1000000 grid points per unit) are accepted: memory out of reach, use a smaller grid
    """
    for u in units:
        lengths = sorted(((len(v), k) for k, v in u.params.items() if isinstance(v, (list, tuple))), reverse=True)
        if not lengths:
            continue
        grid = lengths[0][0] * (lengths[1][0] if len(lengths) > 1 else 1)
        if lengths[0][0] > MAX_LIST or grid > MAX_GRID:
            what = f"{lengths[0][0]} values of {lengths[0][1]}"
            if grid > MAX_GRID:
                what = f"a grid of {lengths[0][0]} × {lengths[1][0]} ({lengths[0][1]} × {lengths[1][1]})"
            raise ConfigError(
                f"{name}: unit {u.key!r} would take {what}; at most {MAX_LIST} per list (and {MAX_GRID} grid points "
                "per unit) are accepted: memory out of reach, use a smaller grid"
            )


def check_gpu_request(plan: Sequence[tuple[Experiment, str, Sequence[str], Mapping[str, Any]]], gpus: float) -> None:
    """Refuse GPUs asked for training units that would train on the CPU (they would hold GPUs and not use them).

    >>> from samkit.experiments import get
    >>> e7 = get("E7")
    >>> check_gpu_request([(e7, "tiny", ["device=cuda"], e7.config("tiny", ["device=cuda"]))], 0.25)  # fine
    >>> check_gpu_request([(e7, "tiny", [], e7.config("tiny"))], 0.25)
    Traceback (most recent call last):
    ...
    samkit.experiments.base.ConfigError: --gpus-per-unit 0.25 would reserve GPUs for E7's training units, but they \
train on device=cpu: add --device cuda (or leave out --gpus-per-unit)
    """
    for exp, _, _, cfg in plan:
        if gpus and exp.device_units and cfg.get("device") == "cpu":
            raise ConfigError(
                f"--gpus-per-unit {gpus:g} would reserve GPUs for {exp.name}'s training units, but they train on "
                "device=cpu: add --device cuda (or leave out --gpus-per-unit)"
            )


def run_experiments(
    plan: Sequence[tuple[Experiment, str, Sequence[str], Mapping[str, Any]]],
    out: Path | str,
    executor: Executor | None = None,
    *,
    progress: bool = True,
    on_unit: Callable[[str, bool], None] | None = None,
    on_result: Callable[[ExperimentResult], None] | None = None,
    gpus_per_unit: float = 0.0,
) -> tuple[list[ExperimentResult], list[Failure]]:
    """Run several experiments through one executor, so the units of all of them share the workers.

    ``plan`` holds ``(experiment, preset, overrides, resolved config)`` tuples. Units already on disk are reused.
    The driver (this process) alone writes: each unit's file as soon as it comes back (in whatever order), then,
    once every unit of an experiment is in, its tables, its ``config.json`` (the commit point: the config with the
    row counts and checksums of the tables it produced) and its ``result.json``. An experiment whose prerequisites
    are missing (:meth:`Experiment.missing`) or one of whose units raised is reported as a :class:`Failure`
    (and ``failure.json`` in its folder); the other experiments still finish. Ctrl-C stops the workers; finished
    units are kept, so a rerun resumes. ``gpus_per_unit`` is added to the resource requests of the units of
    experiments that train on a torch device (:attr:`Experiment.device_units`), for executors that schedule GPUs.
    """
    out = claim_results_folder(ensure_writable(Path(out)))
    executor = executor or InlineExecutor()
    planned: list[Planned] = []
    failures: list[Failure] = []
    check_gpu_request(plan, gpus_per_unit)
    for exp, preset, overrides, cfg in plan:
        p = Planned(exp, preset, dict(cfg), list(overrides), out / exp.name)
        missing = exp.missing(p.config)
        if missing:
            failures.append(Failure(exp.name, f"{exp.name} did not run: {missing}", "missing"))
            _write_failure(p.exp_dir, failures[-1])
            continue
        planned.append(p)
    results: list[ExperimentResult] = []
    with contextlib.ExitStack() as stack:
        for p in planned:
            stack.enter_context(folder_lock(p.exp_dir))
        tasks: list[Task] = []
        by_task: dict[int, tuple[Planned, Unit, Path, str]] = {}
        for p in planned:
            p.t0 = time.perf_counter()
            p.units = p.exp.units(p.config)
            check_sizes(p.exp.name, p.units)
            keys = [u.key for u in p.units]
            if len(set(keys)) != len(keys):
                raise RuntimeError(f"{p.exp.name}: duplicate unit keys")
            for u in p.units:
                h = unit_hash(p.exp, u.params)
                path = p.exp_dir / "units" / f"{safe_name(u.key)}-{h}.json"
                hit, res, why = _load_cached(path, h)
                if why is not None:
                    print(f"samkit: {p.exp.name}: recomputing unit {u.key}: {str(path)!r}: {why}", file=sys.stderr)
                if hit:
                    p.results[u.key] = res
                    p.cached += 1
                    if on_unit is not None:
                        on_unit(u.key, True)
                    continue
                needs = dict(p.exp.resources(u.params))
                if gpus_per_unit and p.exp.device_units:
                    needs["num_gpus"] = gpus_per_unit
                t = Task(p.exp.name, u.key, u.params, p.exp.run_unit, needs)
                by_task[id(t)] = (p, u, path, h)
                tasks.append(t)
                p.remaining += 1
        bar = _progress_bar(tasks, planned, executor) if progress and tasks else None
        provs = {p.exp.name: provenance(p.config) for p in planned}
        try:
            for p in planned:
                if p.remaining == 0:
                    _complete(p, results, failures, on_result)
            for outcome in executor.run(tasks):
                p, u, path, h = by_task[id(outcome.task)]
                if outcome.ok:
                    write_json(
                        path,
                        {
                            "experiment": p.exp.name,
                            "key": u.key,
                            "hash": h,
                            "params": u.params,
                            "seconds": outcome.seconds,
                            "provenance": provs[p.exp.name],
                            "result": outcome.result,
                            "result_sha256": result_digest(outcome.result),
                        },
                    )
                    p.results[u.key] = outcome.result
                    p.unit_seconds += outcome.seconds
                else:
                    p.errors.append(outcome.error or "unknown error")
                    _log(bar, f"samkit: error: {outcome.error.splitlines()[0] if outcome.error else ''}")
                p.remaining -= 1
                if bar is not None:
                    bar.done(outcome.task)
                if on_unit is not None and outcome.ok:
                    on_unit(u.key, False)
                if p.remaining == 0:
                    _complete(p, results, failures, on_result)
        finally:
            if bar is not None:
                bar.close()
    order = {p.exp.name: i for i, p in enumerate(planned)}
    results.sort(key=lambda r: order[r["experiment"]])
    return results, failures


def _log(bar: Progress | None, text: str) -> None:
    if bar is not None:
        bar.write(text)
    else:
        print(text, file=sys.stderr)


def _progress_bar(tasks: Sequence[Task], planned: Sequence[Planned], executor: Executor) -> Progress:
    """The run's progress on stderr (:class:`samkit._progress.Progress`): a bar naming the running units on a
    terminal, plain lines otherwise."""
    names = ", ".join(p.exp.name for p in planned if p.remaining)
    return Progress(tasks, names, slots(executor))


def _write_failure(exp_dir: Path, failure: Failure) -> None:
    write_json(exp_dir / "failure.json", failure.to_dict())


def _complete(
    p: Planned,
    results: list[ExperimentResult],
    failures: list[Failure],
    on_result: Callable[[ExperimentResult], None] | None,
) -> None:
    """Every unit of ``p`` is in: commit its tables and config, then judge and draw from the files on disk."""
    if p.errors:
        n = len(p.errors)
        reason = f"{p.exp.name}: {n} unit{'s' if n > 1 else ''} failed; the first: {p.errors[0].splitlines()[0]}"
        failures.append(Failure(p.exp.name, reason, "error"))
        _write_failure(p.exp_dir, failures[-1])
        return
    ordered = {u.key: p.results[u.key] for u in p.units}  # unit order, not completion order
    tables = p.exp.tables(p.config, ordered)
    # Everything new is written beside the old results, in EXP/.commit/, and switched over only once it is all
    # there: a failed write (disk full, a quota, a crash) leaves the previous results as they were, judged as before.
    new = p.exp_dir / _STAGING
    if new.exists():
        shutil.rmtree(new)
    manifest = {}
    for name, rows in tables.items():
        text = csv_text(rows)
        atomic_write_text(new / "data" / f"{safe_name(name)}.csv", text)
        manifest[f"{safe_name(name)}.csv"] = {"rows": len(rows), "sha256": hashlib.sha256(text.encode()).hexdigest()}
    write_json(
        new / "config.json",
        {
            "experiment": p.exp.name,
            "preset": p.preset,
            "overrides": p.overrides,
            "config": p.config,
            "config_hash": stable_hash(p.config),
            "tables": manifest,
        },
    )
    run_info = {
        "units": len(p.units),
        "units_cached": p.cached,
        "seconds": round(time.perf_counter() - p.t0, 2),
        "unit_seconds": round(p.unit_seconds, 2),
    }
    res = finalize(p.exp, new, run_info=run_info)
    _switch_over(new, p.exp_dir)
    with contextlib.suppress(FileNotFoundError):
        (p.exp_dir / "failure.json").unlink()
    results.append(res)
    if on_result is not None:
        on_result(res)


#: Where a run writes an experiment's new tables, config, figures and result before switching them in.
_STAGING = ".commit"
#: What a committed experiment folder holds besides its units (replaced as a whole by :func:`_switch_over`).
_COMMITTED = ("data", "figures", "result.json", "config.json")


def _switch_over(new: Path, exp_dir: Path) -> None:
    """Move the complete new outputs in ``new`` into ``exp_dir``, the old ones aside first (then deleted); the config
    (the commit point that names the tables and their checksums) goes last. Renames within one folder need no space,
    so once everything was written this cannot fail half-way for want of it."""
    old = exp_dir / ".old"
    if old.exists():
        shutil.rmtree(old)
    old.mkdir()
    for name in _COMMITTED:
        dest = exp_dir / name
        if dest.exists() or dest.is_symlink():
            os.replace(dest, old / name)
        if (new / name).exists():
            os.replace(new / name, dest)
    shutil.rmtree(old)
    shutil.rmtree(new)


def _is_results_entry(path: Path) -> bool:
    """Whether ``path``, an entry of a results folder with no :data:`~samkit._io.MARKER`, was written by samkit (a
    folder from before the marker): an experiment folder, or the report's files."""
    if path.is_dir():
        return any((path / n).exists() for n in ("config.json", "result.json", "failure.json", "units", ".lock"))
    head = file_head(path)
    if head is None:
        return False
    if path.name == "README.md":
        return head.startswith(b"# samkit")
    if path.name == "index.html":
        return b"samkit" in head
    return path.name == "claims.json" and b'"claims"' in head


def claim_results_folder(out: Path) -> Path:
    """:func:`~samkit._io.claim_folder` for a results folder (``run``, ``reproduce``, ``report``)."""
    return claim_folder(out, ours=_is_results_entry, what="results folder")


class DamagedDataError(ConfigError):
    """A table on disk does not match what the run that wrote it recorded (truncated, edited, missing)."""


class TamperedConfigError(DamagedDataError):
    """``config.json`` is not the config that its preset and overrides give (edited after the run)."""


def read_config(exp_dir: Path, exp: Experiment | None = None) -> dict[str, Any]:
    """Read and check ``EXP_DIR/config.json``: a clear :class:`ConfigError` when it is missing or damaged.

    With ``exp`` (the experiment it belongs to), the config is re-derived from the recorded preset and overrides
    through ``exp``'s schema (:meth:`Experiment.config`) and must equal the recorded config and its hash, else
    :class:`TamperedConfigError`: a threshold edited in ``config.json`` can never judge the data.
    """
    path = Path(exp_dir) / "config.json"
    meta = read_json(path)
    ok = isinstance(meta, dict) and isinstance(meta.get("config"), dict) and isinstance(meta.get("experiment"), str)
    ok = ok and isinstance(meta.get("tables"), dict) and isinstance(meta.get("preset"), str)
    ok = (
        ok
        and isinstance(meta.get("overrides", []), list)
        and all(isinstance(o, str) for o in meta.get("overrides", []))
    )
    if not ok:
        raise ConfigError(
            f"{str(path)!r} is not a complete samkit config (written by an older samkit or edited); "
            f"rerun `samkit run {Path(exp_dir).name}`"
        )
    if exp is not None:
        verify_config(exp, meta, path)
    return meta


def verify_config(exp: Experiment, meta: Mapping[str, Any], path: Path) -> None:
    """Raise :class:`TamperedConfigError` unless ``meta`` (the content of ``path``, a ``config.json`` read by
    :func:`read_config`) holds the config its preset and overrides give through ``exp``'s schema."""
    rerun = f"rerun `samkit run {exp.name}` to recompute it"
    if meta["experiment"] != exp.name:
        raise TamperedConfigError(f"{str(path)!r} is the config of {meta['experiment']!r}, not of {exp.name}; {rerun}")
    try:
        derived = exp.config(meta["preset"], meta.get("overrides", []))
    except ConfigError as err:
        raise TamperedConfigError(
            f"{str(path)!r}: its preset and overrides give no valid config ({err}); {rerun}"
        ) from None
    derived = json.loads(json.dumps(_jsonable(derived)))
    if derived != meta["config"] or stable_hash(derived) != meta.get("config_hash"):
        keys = sorted(k for k in set(derived) | set(meta["config"]) if derived.get(k) != meta["config"].get(k))
        what = f"key(s) {', '.join(keys)} differ" if keys else "its config_hash differs"
        raise TamperedConfigError(
            f"{str(path)!r} was edited: it is not the config that preset {meta['preset']!r} with overrides "
            f"{meta.get('overrides', [])} gives ({what}); {rerun}"
        )


def load_tables(exp_dir: Path, manifest: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Table]:
    """Read the ``data/*.csv`` of an experiment directory.

    With ``manifest`` (the ``tables`` of ``config.json``: file name -> rows and sha256), exactly those files are
    read and each must match its recorded checksum and row count, else :class:`DamagedDataError` — verdicts are
    never computed from partial or edited data.
    """
    data_dir = Path(exp_dir) / "data"
    if manifest is None:
        return {p.stem: read_table(p) for p in sorted(data_dir.glob("*.csv"))}
    out = {}
    rerun = f"rerun `samkit run {Path(exp_dir).name}` to recompute it from the cached units"
    for name, meta in sorted(manifest.items()):
        path = data_dir / safe_name(name)
        if not isinstance(meta, Mapping):
            raise DamagedDataError(
                f"{str(Path(exp_dir) / 'config.json')!r} records {name!r} as {meta!r}, not as its rows and sha256; "
                f"{rerun}"
            )
        try:
            raw = path.read_bytes()
        except OSError:
            raise DamagedDataError(f"{str(path)!r} is missing; {rerun}") from None
        # nothing is decoded before its checksum matched: a crafted file is refused unread
        if hashlib.sha256(raw).hexdigest() != meta.get("sha256"):
            raise DamagedDataError(
                f"{str(path)!r} is damaged: its sha256 differs from the one config.json records; {rerun}"
            )
        try:
            table = table_from_text(raw.decode("utf-8"))
        except (UnicodeDecodeError, csv.Error) as err:
            raise DamagedDataError(f"{str(path)!r} is damaged: it is not samkit's CSV text ({err}); {rerun}") from None
        if len(table) != meta.get("rows"):
            raise DamagedDataError(
                f"{str(path)!r} is damaged: it holds {len(table)} rows, the run recorded {meta.get('rows')}; {rerun}"
            )
        out[path.stem] = table
    return out


def finalize(exp: Experiment, exp_dir: Path, run_info: Mapping[str, Any] | None = None) -> ExperimentResult:
    """From the saved config and CSV files: compute the claims, draw the figures and write ``result.json``.

    The CSV files are checked against the row counts and checksums recorded in ``config.json`` first.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    exp_dir = Path(exp_dir)
    meta = read_config(exp_dir, exp)
    cfg = meta["config"]
    data = load_tables(exp_dir, meta["tables"])
    claims = exp.claims(cfg, data)
    for c in claims:
        c.experiment = exp.name
    fig_dir = exp_dir / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    try:
        figures = exp.figures(cfg, data, fig_dir)
    finally:
        plt.close("all")
    if run_info is None and (exp_dir / "result.json").exists():
        with contextlib.suppress(ConfigError):
            old = read_json(exp_dir / "result.json")
            run_info = old.get("run") if isinstance(old, dict) else None
    result = ExperimentResult(
        {
            "experiment": exp.name,
            "title": exp.title,
            "summary": exp.summary,
            "preset": meta["preset"],
            "overrides": meta.get("overrides", []),
            "config_hash": meta["config_hash"],
            "provenance": provenance(cfg),
            "run": dict(run_info or {}),
            "claims": [c.to_dict() for c in claims],
            "figures": [vars(f) for f in figures],
            "data": [f"data/{safe_name(n)}" for n in sorted(meta["tables"])],
        }
    )
    write_json(exp_dir / "result.json", result)
    return result
