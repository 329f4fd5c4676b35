"""The habits of a kept library, checked: short functions in ``src/``, no formatter escapes, the files a user looks
for (licence, changelog, contributing guide), and lint settings that agree with each other."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "samkit"
#: the longest function (``def`` line to last line, docstring included) that src/ may hold
MAX_FUNCTION_LINES = 80


def _sources() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def _pyproject() -> dict[str, Any]:
    tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python >= 3.11")
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def test_no_function_in_src_is_longer_than_80_lines():
    long = []
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                assert node.end_lineno is not None
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({n} lines)")
    assert not long, "split these into named helpers:\n" + "\n".join(long)


def test_no_formatter_escapes_in_src():
    escapes = re.compile(r"#\s*fmt:\s*(skip|off|on)\b")
    found = [
        f"{path.relative_to(ROOT)}:{i}"
        for path in _sources()
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        if escapes.search(line)
    ]
    assert not found, "write these lines so that ruff format's output is fine:\n" + "\n".join(found)


def test_licence_changelog_and_contributing_guide_are_there():
    meta = _pyproject()["project"]
    licence = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert meta["license"] == {"text": "MIT"} and licence.startswith("MIT License")
    assert "Copyright (c) 2026 the samkit authors" in licence
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert "## [Unreleased]" in changelog and f"## [{meta['version']}]" in changelog
    contributing = (ROOT / "CONTRIBUTING.md").read_text(encoding="utf-8")
    for command in ("make install", "make test", "make lint"):
        assert command in contributing


def test_pre_commit_pins_the_ruff_of_the_dev_environment_and_runs_mypy():
    config = (ROOT / ".pre-commit-config.yaml").read_text(encoding="utf-8")
    assert re.search(r"rev: v\d+\.\d+\.\d+", config) and "id: ruff-check" in config and "id: ruff-format" in config
    assert "entry: .venv/bin/mypy" in config
    pyproject = _pyproject()
    assert any(d.startswith("mypy") for d in pyproject["project"]["optional-dependencies"]["dev"])
    mypy = pyproject["tool"]["mypy"]
    assert mypy["files"] == ["src/samkit"] and not mypy.get("strict", False)
    assert mypy["python_version"] == pyproject["project"]["requires-python"].removeprefix(">=")
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    lint = makefile[makefile.index("\nlint:") :].split("\n\n")[0]
    assert "ruff check" in lint and "$(VENV)/bin/mypy" in lint
    assert "make lint" in (ROOT / ".ci" / "run").read_text(encoding="utf-8")
