"""Running an experiment: cached, resumable work units, atomic writes, provenance, claims and figures.

Layout of an experiment's output directory ``OUT/<name>/``::

    config.json        the resolved config, its hash, the preset and the overrides
    units/KEY-HASH.json one file per finished work unit (HASH covers the experiment, its version and the
                        unit's parameters): a rerun skips every unit whose file exists, so an interrupted
                        run resumes where it stopped
    data/TABLE.csv     tidy tables built from the unit results
    figures/*.png      figures drawn from the CSV files (read back from disk)
    result.json        claims with verdicts, figures with captions, provenance, timings

Every write goes to a temporary file in the same directory and is renamed into place, so a killed run
never leaves a half-written file behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from samkit._io import atomic_write_text, write_csv
from samkit._threads import default_threads, torch_threads
from samkit.experiments.base import (
    Claim,
    ConfigError,
    Experiment,
    Figure,
    Table,
    _jsonable,
    read_table,
    stable_hash,
)

__all__ = [
    "atomic_write_text",
    "write_json",
    "write_csv",
    "read_json",
    "provenance",
    "unit_hash",
    "ensure_writable",
    "run_experiment",
    "finalize",
    "ExperimentResult",
]


def write_json(path: Path, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON (numpy values and non-finite floats made JSON-safe)."""
    atomic_write_text(path, json.dumps(_jsonable(obj), indent=1, sort_keys=False) + "\n")


def read_json(path: Path) -> Any:
    """Read a JSON file."""
    with open(path) as fh:
        return json.load(fh)


def _git_commit() -> str | None:
    here = Path(__file__).resolve().parent
    try:
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


def _threads() -> contextlib.AbstractContextManager[None]:
    """Run a unit on ``SAMKIT_THREADS`` torch threads (default 1; see :mod:`samkit._threads`): small float64
    problems run fastest and most predictably single-threaded on a shared machine, and a fixed thread count keeps
    results bit-identical."""
    return torch_threads(default_threads())


def unit_hash(exp: Experiment, params: Mapping[str, Any]) -> str:
    """The cache key of a unit: the experiment's name and version and the unit's parameters."""
    return stable_hash({"experiment": exp.name, "version": exp.version, "params": dict(params)})


def ensure_writable(out: Path) -> Path:
    """Create ``out`` if needed and check that files can be written there; raise :class:`ConfigError` if not."""
    out = Path(out)
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


def run_experiment(
    exp: Experiment,
    preset: str = "quick",
    out: Path | str = "results",
    overrides: Iterable[str] = (),
    *,
    progress: bool = True,
    config: Mapping[str, Any] | None = None,
    on_unit: Callable[[str, bool], None] | None = None,
) -> ExperimentResult:
    """Run ``exp`` (resuming from cached units), write its tables, then :func:`finalize` it.

    ``on_unit(key, cached)`` is called after each unit (used by tests and progress reporting).
    """
    overrides = list(overrides)
    cfg = dict(config) if config is not None else exp.config(preset, overrides)
    exp_dir = ensure_writable(Path(out)) / exp.name
    t0 = time.perf_counter()
    write_json(
        exp_dir / "config.json",
        {
            "experiment": exp.name,
            "preset": preset,
            "overrides": overrides,
            "config": cfg,
            "config_hash": stable_hash(cfg),
        },
    )
    units = exp.units(cfg)
    keys = [u.key for u in units]
    if len(set(keys)) != len(keys):
        raise RuntimeError(f"{exp.name}: duplicate unit keys")
    prov = provenance(cfg)
    results: dict[str, dict[str, Any]] = {}
    n_cached = 0
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(units), desc=f"{exp.name} {preset}", unit="run", leave=True)
    try:
        for unit in units:
            h = unit_hash(exp, unit.params)
            path = exp_dir / "units" / f"{unit.key}-{h}.json"
            cached = False
            if path.exists():
                try:
                    stored = read_json(path)
                    if stored.get("hash") == h:
                        results[unit.key] = stored["result"]
                        cached = True
                except (OSError, ValueError, KeyError):
                    cached = False
            if not cached:
                t_unit = time.perf_counter()
                with _threads():
                    res = exp.run_unit(unit.params)
                res = _jsonable(res)
                write_json(
                    path,
                    {
                        "experiment": exp.name,
                        "key": unit.key,
                        "hash": h,
                        "params": unit.params,
                        "seconds": round(time.perf_counter() - t_unit, 3),
                        "provenance": prov,
                        "result": res,
                    },
                )
                results[unit.key] = res
            else:
                n_cached += 1
            if bar is not None:
                bar.set_postfix_str(unit.key[:30])
                bar.update(1)
            if on_unit is not None:
                on_unit(unit.key, cached)
    finally:
        if bar is not None:
            bar.close()
    tables = exp.tables(cfg, results)
    for name, rows in tables.items():
        write_csv(exp_dir / "data" / f"{name}.csv", rows)
    return finalize(
        exp,
        exp_dir,
        run_info={
            "units": len(units),
            "units_cached": n_cached,
            "seconds": round(time.perf_counter() - t0, 2),
        },
    )


def load_tables(exp_dir: Path) -> dict[str, Table]:
    """Read every ``data/*.csv`` of an experiment directory."""
    return {p.stem: read_table(p) for p in sorted((Path(exp_dir) / "data").glob("*.csv"))}


def finalize(exp: Experiment, exp_dir: Path, run_info: Mapping[str, Any] | None = None) -> ExperimentResult:
    """From the saved config and CSV files: compute the claims, draw the figures and write ``result.json``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    exp_dir = Path(exp_dir)
    meta = read_json(exp_dir / "config.json")
    cfg = meta["config"]
    data = load_tables(exp_dir)
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
        run_info = read_json(exp_dir / "result.json").get("run")
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
            "data": [f"data/{p.name}" for p in sorted((exp_dir / "data").glob("*.csv"))],
        }
    )
    write_json(exp_dir / "result.json", result)
    return result
