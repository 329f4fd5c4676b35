"""The experiment contract: configs with presets, work units, claims with verdicts, figures.

An :class:`Experiment` declares its configuration as named presets (``tiny`` for tests, ``quick`` for
``samkit reproduce --preset quick``, ``full`` for the paper-sized run), splits the work into independent
:class:`Unit` s (each cached on disk under a hash of its parameters, so an interrupted run resumes),
turns the unit results into tidy tables (written as CSV), and then — from the tables read back from
disk, never from in-memory state — computes its :class:`Claim` s and draws its :class:`Figure` s.

Example:
    >>> c = Claim(id="X.1", statement="GD converges", setting="η=0.1", prediction="loss < 1e-6",
    ...           measured="loss = 3e-9", tolerance="none", passed=True)
    >>> c.verdict, Claim(**{**vars(c), "exercised": False}).verdict
    ('PASS', 'NOT EXERCISED')
    >>> apply_overrides({"steps": 10, "etas": [0.1, 0.2]}, ["steps=20", "etas=0.3,0.4"])
    {'steps': 20, 'etas': [0.3, 0.4]}
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from samkit._io import jsonable as _jsonable  # one JSON-safe converter (re-exported for the runner)

__all__ = [
    "PRESETS",
    "NOT_EXERCISED",
    "ConfigError",
    "Claim",
    "Figure",
    "Unit",
    "Table",
    "Experiment",
    "apply_overrides",
    "parse_value",
    "stable_hash",
    "fmt",
]

#: The preset names every experiment declares.
PRESETS = ("tiny", "quick", "full")
#: The verdict of a claim whose precondition did not hold in the data (see :class:`Claim`).
NOT_EXERCISED = "NOT EXERCISED"


class ConfigError(ValueError):
    """A bad configuration value or override (the CLI prints it on one line and exits with code 2)."""


def stable_hash(obj: Any, n: int = 12) -> str:
    """A short, stable hash of a JSON-able object (keys sorted).

    >>> stable_hash({"b": 1, "a": [1.0, 2]}) == stable_hash({"a": [1.0, 2], "b": 1})
    True
    """
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def fmt(x: float, digits: int = 3) -> str:
    """Format a number compactly for claims and tables.

    >>> fmt(0.000123456), fmt(12.3456), fmt(float("inf")), fmt(3)
    ('1.23e-04', '12.3', 'inf', '3')
    """
    if isinstance(x, (bool, np.bool_)):
        return str(bool(x))
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    x = float(x)
    if not math.isfinite(x):
        return str(x)
    if x != 0 and (abs(x) < 1e-2 or abs(x) >= 1e4):
        return f"{x:.{digits - 1}e}"
    return f"{x:.{digits}g}"


_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def parse_value(text: str, like: Any, key: str = "value") -> Any:
    """Parse ``text`` into the type of ``like`` (the default value of the key).

    Lists accept ``a,b,c`` or JSON ``[a, b, c]``; each element takes the type of the default's first
    element (floats accept integers, integers reject ``1.5``).

    >>> parse_value("3", 1.0), parse_value("1e-3,2", [0.1]), parse_value("yes", False)
    (3.0, [0.001, 2.0], True)
    >>> parse_value("1.5", 2, "steps")
    Traceback (most recent call last):
    ...
    samkit.experiments.base.ConfigError: steps: expected an integer, got '1.5'
    """
    text = text.strip()
    if isinstance(like, bool):
        low = text.lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ConfigError(f"{key}: expected true or false, got {text!r}")
    if isinstance(like, int):
        try:
            return int(text)
        except ValueError:
            raise ConfigError(f"{key}: expected an integer, got {text!r}") from None
    if isinstance(like, float):
        try:
            value = float(text)
        except ValueError:
            raise ConfigError(f"{key}: expected a number, got {text!r}") from None
        if not math.isfinite(value):
            raise ConfigError(f"{key}: expected a finite number, got {text!r}")
        return value
    if isinstance(like, (list, tuple)):
        if text.startswith("["):
            try:
                items = json.loads(text)
            except json.JSONDecodeError:
                raise ConfigError(f"{key}: expected a list like 1,2,3 or [1, 2, 3], got {text!r}") from None
            if not isinstance(items, list):
                raise ConfigError(f"{key}: expected a list, got {text!r}")
            parts = [json.dumps(i) if not isinstance(i, str) else i for i in items]
        else:
            parts = [p for p in text.split(",") if p.strip()]
        if not parts:
            raise ConfigError(f"{key}: expected a non-empty list, got {text!r}")
        elem = like[0] if len(like) else 0.0
        return [parse_value(p, elem, key) for p in parts]
    if isinstance(like, str):
        return text
    raise ConfigError(f"{key}: cannot be set from the command line")


def apply_overrides(config: Mapping[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Return a copy of ``config`` with ``key=value`` overrides applied, typed like the defaults."""
    out = dict(config)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, text = item.split("=", 1)
        key = key.strip()
        if key not in out:
            known = ", ".join(sorted(out))
            raise ConfigError(f"unknown config key {key!r} (known keys: {known})")
        out[key] = parse_value(text, out[key], key)
    return out


@dataclass
class Claim:
    """One checked statement: the paper's claim, the prediction, the measurement and the verdict.

    ``prediction`` comes from :mod:`samkit.dynamics.theory` (or an expected behaviour computed from
    the data), ``measured`` from a run; ``tolerance`` says how the two are compared. ``exercised=False``
    says the data did not meet the claim's precondition (its mechanism was not put to work): the verdict is
    then ``"NOT EXERCISED"`` whatever ``passed`` says, and such a claim counts as not passed.
    """

    id: str
    statement: str
    setting: str
    prediction: str
    measured: str
    tolerance: str
    passed: bool
    experiment: str = ""
    figure: str | None = None
    data: list[str] = field(default_factory=list)
    values: dict[str, Any] = field(default_factory=dict)
    exercised: bool = True

    @property
    def verdict(self) -> str:
        """``"PASS"``, ``"FAIL"``, or ``"NOT EXERCISED"`` when the precondition did not hold in the data."""
        if not self.exercised:
            return NOT_EXERCISED
        return "PASS" if self.passed else "FAIL"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict, with the verdict (``passed`` is false for a claim that was not exercised)."""
        d = asdict(self)
        d["passed"] = bool(self.passed and self.exercised)
        d["exercised"] = bool(self.exercised)
        d["verdict"] = self.verdict
        d["values"] = _jsonable(self.values)
        return d


@dataclass
class Figure:
    """A saved figure: its file (relative to the experiment directory), caption and the data behind it."""

    file: str
    title: str
    caption: str
    claims: list[str] = field(default_factory=list)
    data: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Unit:
    """One independent piece of work; ``params`` hold everything it needs (they are hashed for the cache)."""

    key: str
    params: dict[str, Any]


class Table:
    """Tidy rows (a list of dicts) read back from a CSV file, with small column helpers.

    >>> t = Table([{"m": "sam", "x": 1.0}, {"m": "usam", "x": 2.0}, {"m": "sam", "x": 3.0}])
    >>> t.where(m="sam").col("x").tolist(), t.unique("m")
    ([1.0, 3.0], ['sam', 'usam'])
    """

    def __init__(self, rows: Sequence[Mapping[str, Any]]):
        self.rows = [dict(r) for r in rows]

    def __len__(self) -> int:
        return len(self.rows)

    def where(self, **conds: Any) -> Table:
        """Rows whose columns equal the given values (floats compared with a relative tolerance)."""

        def ok(row: Mapping[str, Any]) -> bool:
            for k, v in conds.items():
                r = row.get(k)
                if isinstance(v, float) and isinstance(r, (int, float)) and not isinstance(r, bool):
                    if not math.isclose(float(r), v, rel_tol=1e-9, abs_tol=1e-300):
                        return False
                elif r != v:
                    return False
            return True

        return Table([r for r in self.rows if ok(r)])

    def col(self, name: str) -> np.ndarray:
        """One column as a numpy array (float where possible)."""
        values = [r[name] for r in self.rows]
        try:
            return np.asarray(values, dtype=float)
        except (TypeError, ValueError):
            return np.asarray(values, dtype=object)

    def unique(self, name: str) -> list[Any]:
        """Distinct values of a column, sorted."""
        return sorted({r[name] for r in self.rows})

    def first(self, name: str) -> Any:
        """The value of ``name`` in the first row (raises if the table is empty)."""
        if not self.rows:
            raise LookupError(f"no rows to read {name!r} from")
        return self.rows[0][name]


def _convert(text: str) -> Any:
    if text in ("True", "False"):
        return text == "True"
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def read_table(path: Path) -> Table:
    """Read a CSV written by :func:`samkit.experiments.runner.write_csv` back into a :class:`Table`."""
    with open(path, newline="") as fh:
        return Table([{k: _convert(v) for k, v in row.items()} for row in csv.DictReader(fh)])


class Experiment:
    """Base class of the paper's experiments; subclass and register with :func:`samkit.experiments.register`.

    Subclasses set ``name``, ``title``, ``summary``, ``presets`` (a dict per preset in :data:`PRESETS`,
    all with the same keys, including ``seed``) and implement :meth:`units`, :meth:`run_unit`,
    :meth:`tables`, :meth:`claims` and :meth:`figures`. Bump ``version`` when a change to the code makes
    cached unit results stale.
    """

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    version: ClassVar[int] = 1
    presets: ClassVar[dict[str, dict[str, Any]]] = {}
    #: True when units train with torch on ``device="auto"`` (CUDA when visible): such units get a GPU share on
    #: executors that schedule GPUs (``--executor ray --gpus-per-unit F``).
    device_units: ClassVar[bool] = False

    def config(self, preset: str = "quick", overrides: Iterable[str] = ()) -> dict[str, Any]:
        """The config of ``preset`` with ``key=value`` overrides applied."""
        if preset not in self.presets:
            raise ConfigError(f"unknown preset {preset!r} for {self.name} (choose from {', '.join(self.presets)})")
        return apply_overrides(self.presets[preset], overrides)

    def units(self, config: Mapping[str, Any]) -> list[Unit]:
        """Split the work of ``config`` into independent units."""
        raise NotImplementedError

    def run_unit(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Run one unit; return a JSON-able dict (lists and numbers)."""
        raise NotImplementedError

    def tables(self, config: Mapping[str, Any], results: Mapping[str, Mapping[str, Any]]) -> dict[str, list[dict]]:
        """Turn the unit results (keyed by unit key) into tidy tables: name -> list of row dicts."""
        raise NotImplementedError

    def claims(self, config: Mapping[str, Any], data: Mapping[str, Table]) -> list[Claim]:
        """Compute the claims from the tables read back from disk."""
        raise NotImplementedError

    def figures(self, config: Mapping[str, Any], data: Mapping[str, Table], fig_dir: Path) -> list[Figure]:
        """Draw the figures into ``fig_dir`` from the tables read back from disk."""
        raise NotImplementedError

    def missing(self, config: Mapping[str, Any]) -> str | None:
        """What this experiment needs and cannot find (e.g. a dataset), or ``None`` when it can run.

        Checked for every experiment before the first unit of a run starts, so a missing prerequisite is reported
        at once instead of stopping a long run half way.
        """
        return None

    def resources(self, params: Mapping[str, Any]) -> dict[str, float]:
        """The resources one unit needs, as Ray resource requests (``num_cpus``, ``num_gpus``; fractions allowed).

        The default is one CPU; a unit that trains with torch may ask for a GPU share when CUDA is there.
        """
        return {"num_cpus": 1}
