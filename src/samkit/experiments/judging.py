"""Judging an experiment from the files on disk: :func:`finalize` computes the claims and draws the figures from the
config and tables a run committed (both checked first) and writes ``result.json``."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from samkit.experiments.base import ConfigError, Experiment
from samkit.experiments.provenance import provenance
from samkit.experiments.results import ExperimentResult
from samkit.experiments.store import load_tables, read_config, read_json, safe_name, write_json

__all__ = ["finalize"]


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
            "scope": [vars(x) for x in exp.scope(cfg)],
            "findings": exp.findings(cfg, data, claims),
            "figures": [vars(f) for f in figures],
            "data": [f"data/{safe_name(n)}" for n in sorted(meta["tables"])],
        }
    )
    write_json(exp_dir / "result.json", result)
    return result
