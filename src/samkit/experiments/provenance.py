"""Where a result comes from: the versions and commit it was computed with (:func:`provenance`) and the cache key
of a work unit (:func:`unit_hash`), which covers the source code that computes it (:func:`code_fingerprint`)."""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import inspect
import platform
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from samkit.experiments.base import Experiment, stable_hash

__all__ = ["provenance", "unit_hash", "code_fingerprint"]


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
        "samkit.experiments.plan",
        "samkit.experiments.store",
        "samkit.experiments.locking",
        "samkit.experiments.provenance",
        "samkit.experiments.judging",
        "samkit.experiments.results",
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
