"""Shared machinery for the per-experiment tests: one tiny-preset run per experiment, and data editors.

A test module sets ``NAME = "E1"`` and asks for the ``tiny`` fixture: ``(experiment, result, config, tables read
back from disk, experiment folder)``, run once per session. ``kit`` holds the editors used by must-FAIL tests.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from samkit.experiments import get
from samkit.experiments.base import Table
from samkit.experiments.runner import load_tables, read_json, run_experiment

_SWAP = {"sam": "usam", "usam": "sam"}


def swap_methods(data: dict[str, Table]) -> dict[str, Table]:
    """Every table with SAM and USAM rows relabelled as each other (USAM results fed where SAM's are expected)."""
    out = {}
    for name, table in data.items():
        rows = []
        for row in table.rows:
            row = dict(row)
            for col in ("method", "method_a", "method_b"):
                if row.get(col) in _SWAP:
                    row[col] = _SWAP[row[col]]
            rows.append(row)
        out[name] = Table(rows)
    return out


def verdicts(claims) -> dict[str, str]:
    return {c.id: c.verdict for c in claims}


def edit(data: dict[str, Table], table: str, where: dict, **changes) -> dict[str, Table]:
    """A copy of ``data`` where the rows of ``table`` matching ``where`` get ``changes`` (values or functions of the row)."""
    out = dict(data)
    rows = []
    for row in data[table].rows:
        row = dict(row)
        if all(row.get(k) == v for k, v in where.items()):
            row.update({k: (v(row) if callable(v) else v) for k, v in changes.items()})
        rows.append(row)
    out[table] = Table(rows)
    return out


@pytest.fixture(scope="session")
def kit():
    return SimpleNamespace(swap_methods=swap_methods, verdicts=verdicts, edit=edit)


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory):
    """``run(name)``: the experiment run once per session at its tiny preset."""
    cache: dict[str, tuple] = {}

    def run(name: str) -> tuple:
        if name not in cache:
            exp = get(name)
            out = tmp_path_factory.mktemp(name.lower())
            res = run_experiment(exp, "tiny", out, progress=False)
            d = Path(out) / name
            cache[name] = (exp, res, read_json(d / "config.json")["config"], load_tables(d), d)
        return cache[name]

    return run


@pytest.fixture
def tiny(request, tiny_runs):
    return tiny_runs(request.module.NAME)
