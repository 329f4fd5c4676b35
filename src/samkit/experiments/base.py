"""The experiment contract: configs with presets, work units, claims with verdicts, figures.

An :class:`Experiment` declares its configuration as named presets (``tiny`` for tests, ``quick`` for
``samkit reproduce --preset quick``, ``full`` for the paper-sized run), splits the work into independent
:class:`Unit` s (each cached on disk under a hash of its parameters, so an interrupted run resumes),
turns the unit results into tidy tables (written as CSV), and then — from the tables read back from
disk, never from in-memory state — computes its :class:`Claim` s and draws its :class:`Figure` s.

Example:
    >>> c = Claim(id="X.1", statement="GD converges", setting="η=0.1", prediction="loss < 1e-6",
    ...           measured="loss = 3e-9", tolerance="none", passed=True)
    >>> c.verdict, Claim(**{**vars(c), "exercised": False}).verdict, Claim(**{**vars(c), "inconclusive": True}).verdict
    ('PASS', 'NOT EXERCISED', 'INCONCLUSIVE')
    >>> apply_overrides({"steps": 10, "etas": [0.1, 0.2]}, ["steps=20", "etas=0.3,0.4"])
    {'steps': 20, 'etas': [0.3, 0.4]}

Each experiment declares a :class:`Param` per config key (its :attr:`Experiment.schema`): the type, the allowed
range or choices and a one-line description. :meth:`Experiment.config` checks the resolved config against it
and raises :class:`ConfigError` naming the key, the value and what is allowed; :func:`describe` renders it.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, get_args, get_origin

import numpy as np

from samkit import _checks
from samkit._io import jsonable as _jsonable  # one JSON-safe converter (re-exported for the runner)
from samkit.experiments.stats import INCONCLUSIVE

__all__ = [
    "PRESETS",
    "NOT_EXERCISED",
    "INCONCLUSIVE",
    "VERDICTS",
    "ConfigError",
    "Param",
    "describe",
    "Claim",
    "make_claim",
    "Figure",
    "Scope",
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
#: Every verdict, in the order the report lists them (only PASS counts as passed).
VERDICTS = ("FAIL", INCONCLUSIVE, NOT_EXERCISED, "PASS")


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
    if isinstance(like, (int, float)) and not isinstance(like, bool) and not text.isascii():
        # int() and float() read any script's digits ("١٢", full-width "１２"): a typo that should not pass unseen
        raise ConfigError(f"{key}: expected a number written in ASCII digits, got {text!r}")
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


@dataclass(frozen=True)
class Param:
    """One config key of an experiment: its type, the values allowed, and a one-line description.

    ``kind`` is ``int``, ``float``, ``bool``, ``str`` or a list of one of them (``list[float]``, never empty).
    A number, or every element of a list, must lie in ``[min, max]`` (``strict=True``: above ``min``, not at it)
    and, with ``below``, under a number or under the value of the key ``below`` names; ``max`` too may name a key
    (``r`` at most ``d``). ``choices`` lists the
    allowed values of a ``str``; ``length`` fixes a list's length: a number, or the name of a key whose list it
    must match.

    >>> steps = Param(int, "number of steps", min=1)
    >>> steps.check("steps", 500, {}), steps.allowed()
    (500, '>= 1')
    >>> steps.check("steps", 0, {})
    Traceback (most recent call last):
    ...
    samkit.experiments.base.ConfigError: steps must be an integer >= 1, got 0
    >>> Param(float, "smallest ρ", min=0, strict=True, below="rho_max").check("rho_min", 2.0, {"rho_max": 1.0})
    Traceback (most recent call last):
    ...
    samkit.experiments.base.ConfigError: rho_min must be < rho_max (= 1.0), got 2.0
    >>> Param(list[float], "start point", length="a").allowed()
    'list of numbers; as many as a'
    """

    kind: Any
    help: str
    min: float | None = None
    max: float | str | None = None
    strict: bool = False
    below: float | str | None = None
    choices: tuple[str, ...] | None = None
    length: int | str | None = None

    def example(self) -> Any:
        """A value of this key's type, which :func:`parse_value` types a command-line value like.

        >>> Param(list[int], "sizes").example(), Param(float, "eta").example()
        ([0], 0.0)
        """
        one = {int: 0, float: 0.0, bool: False, str: ""}[self.item]
        return [one] if self.is_list else one

    @property
    def item(self) -> type:
        """The type of the value, or of each element for a list."""
        return get_args(self.kind)[0] if self.is_list else self.kind

    @property
    def is_list(self) -> bool:
        """Whether the value is a list."""
        return get_origin(self.kind) is list

    def type_name(self) -> str:
        """``int``, ``float``, ``bool``, ``str`` or ``list[...]``."""
        return f"list[{self.item.__name__}]" if self.is_list else self.item.__name__

    def check(self, key: str, value: Any, config: Mapping[str, Any]) -> Any:
        """Return ``value`` if it is allowed (``config`` holds the keys that ``below``/``length`` name), else
        raise :class:`ConfigError` naming ``key``, the value and what is allowed."""
        if not self.is_list:
            return self._check_one(key, value, config)
        if not isinstance(value, (list, tuple)) or not value:
            raise ConfigError(f"{key} must be a non-empty list of {self.item.__name__}, got {value!r}")
        n = config.get(self.length) if isinstance(self.length, str) else self.length
        n = len(n) if isinstance(n, (list, tuple)) else n
        if n is not None and len(value) != n:
            of = f" (as many as {self.length})" if isinstance(self.length, str) else ""
            raise ConfigError(f"{key} must hold {n} value{'s' if n != 1 else ''}{of}, got {len(value)}: {value!r}")
        for i, v in enumerate(value):
            self._check_one(f"{key}[{i}]", v, config)
        return value

    def _check_one(self, key: str, value: Any, config: Mapping[str, Any]) -> Any:
        kind = self.item
        hi = None if isinstance(self.max, str) else self.max  # a key's value is checked below, with its name
        try:
            if kind is int:
                lo = None if self.min is None else math.floor(self.min) + 1 if self.strict else math.ceil(self.min)
                _checks.integer(value, key, minimum=lo, maximum=None if hi is None else math.floor(hi))
            elif kind is float:
                _checks.number(value, key, minimum=self.min, maximum=hi, strict=self.strict)
        except ValueError as err:
            raise ConfigError(str(err)) from None
        if kind is int and not isinstance(value, bool) and isinstance(value, int) and abs(value) >= 2**63:
            raise ConfigError(f"{key} must fit in a 64-bit integer (|value| < 2^63), got {value!r}")
        if kind is float and isinstance(value, (int, float)) and 0 < abs(value) < sys.float_info.min:
            raise ConfigError(
                f"{key} must be 0 or at least {sys.float_info.min:.3g} in size (a normal float64), got {value!r}"
            )
        if kind is bool and not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        if kind is str:
            if not isinstance(value, str):
                raise ConfigError(f"{key} must be a string, got {value!r}")
            if self.choices is not None and value not in self.choices:
                raise ConfigError(f"{key} must be one of {', '.join(self.choices)}, got {value!r}")
        for op, limit in (("<", self.below), ("<=", self.max if isinstance(self.max, str) else None)):
            bound = config.get(limit) if isinstance(limit, str) else limit
            if isinstance(bound, (int, float)) and not (value < bound if op == "<" else value <= bound):
                name = f"{limit} (= {bound!r})" if isinstance(limit, str) else f"{bound:g}"
                raise ConfigError(f"{key} must be {op} {name}, got {value!r}")
        return value

    def allowed(self) -> str:
        """What is allowed, in words (for :func:`describe`)."""
        if self.item in (int, float):
            one = self._range()
        elif self.item is bool:
            one = "true or false"
        elif self.choices is not None:
            one = " | ".join(self.choices)
        else:
            one = "any text"
        if not self.is_list:
            return one
        what = {int: "integers", float: "numbers", bool: "booleans", str: "strings"}[self.item]
        each = "" if one.startswith("any") else f" each {one}"
        text = f"list of {what}{each}"
        if isinstance(self.length, str):
            text += f"; as many as {self.length}"
        elif self.length is not None:
            text += f"; {self.length} value{'s' if self.length != 1 else ''}"
        return text

    def _range(self) -> str:
        hi, hi_open = None, False
        if self.below is not None:
            hi, hi_open = (self.below if isinstance(self.below, str) else f"{self.below:g}"), True
        elif self.max is not None:
            hi = self.max if isinstance(self.max, str) else f"{self.max:g}"
        if self.min is not None and hi is not None:
            return f"{'(' if self.strict else '['}{self.min:g}, {hi}{')' if hi_open else ']'}"
        if self.min is not None:
            return f"{'>' if self.strict else '>='} {self.min:g}"
        if hi is not None:
            return f"{'<' if hi_open else '<='} {hi}"
        return "any integer" if self.item is int else "any finite number"


def apply_overrides(
    config: Mapping[str, Any], overrides: Iterable[str], schema: Mapping[str, Param] | None = None
) -> dict[str, Any]:
    """Return a copy of ``config`` with ``key=value`` overrides applied, each value typed by its key's
    :class:`Param` in ``schema`` (:meth:`Param.example`), or like the default where no schema declares the key.

    >>> apply_overrides({"eta": 1.0, "steps": 10}, ["steps=20", "eta=2"], {"eta": Param(float, "step size")})
    {'eta': 2.0, 'steps': 20}
    """
    out = dict(config)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, text = item.split("=", 1)
        key = key.strip()
        if key not in out:
            known = ", ".join(sorted(out))
            raise ConfigError(f"unknown config key {key!r} (known keys: {known})")
        like = schema[key].example() if schema is not None and key in schema else out[key]
        out[key] = parse_value(text, like, key)
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
    inconclusive: bool = False

    @property
    def verdict(self) -> str:
        """``"PASS"``, ``"FAIL"``, ``"NOT EXERCISED"`` when the precondition did not hold in the data, or
        ``"INCONCLUSIVE"`` when the interval over seeds straddles the threshold."""
        if not self.exercised:
            return NOT_EXERCISED
        if self.inconclusive:
            return INCONCLUSIVE
        return "PASS" if self.passed else "FAIL"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict, with the verdict (``passed`` is true only for a PASS)."""
        d = asdict(self)
        d["passed"] = self.verdict == "PASS"
        d["exercised"] = bool(self.exercised)
        d["inconclusive"] = bool(self.inconclusive)
        d["verdict"] = self.verdict
        d["values"] = _jsonable(self.values)
        return d


def make_claim(
    *, measured: str, why: Sequence[str] = (), verdict: str | None = None, passed: bool | None = None, **fields: Any
) -> Claim:
    """A :class:`Claim` judged by ``verdict`` (``"PASS"``, ``"FAIL"`` or ``"INCONCLUSIVE"``, e.g. from
    :func:`samkit.experiments.stats.judge`) or by ``passed``; NOT EXERCISED when ``why`` lists a precondition that
    did not hold in the data (the reasons are appended to ``measured``; the numbers stay shown).

    >>> kw = dict(id="X.1", statement="s", setting="", prediction="p", tolerance="t")
    >>> make_claim(measured="m", verdict="INCONCLUSIVE", **kw).verdict
    'INCONCLUSIVE'
    >>> c = make_claim(measured="ratio 3", passed=True, why=["GD diverged"], **kw)
    >>> c.verdict, c.measured
    ('NOT EXERCISED', 'ratio 3 — precondition not met: GD diverged')
    """
    if (verdict is None) == (passed is None):
        raise ValueError("make_claim needs exactly one of verdict and passed")
    if verdict is None:
        verdict = "PASS" if passed else "FAIL"
    if verdict not in ("PASS", "FAIL", INCONCLUSIVE):
        raise ValueError(f"verdict must be PASS, FAIL or {INCONCLUSIVE}, got {verdict!r}")
    why = list(dict.fromkeys(why))
    if why:
        measured += f" — precondition not met: {'; '.join(why)}"
    return Claim(
        measured=measured,
        passed=verdict == "PASS" and not why,
        exercised=not why,
        inconclusive=verdict == INCONCLUSIVE and not why,
        **fields,
    )


@dataclass
class Figure:
    """A saved figure: its file (relative to the experiment directory), caption and the data behind it."""

    file: str
    title: str
    caption: str
    claims: list[str] = field(default_factory=list)
    data: list[str] = field(default_factory=list)


@dataclass
class Scope:
    """What some of an experiment's claims were judged on, in words computed from the config: ``label`` (e.g. the
    architecture), ``what`` (the model, the data, the seeds) and the ids of the ``claims`` judged on it. The report's
    summary lists every scope with the verdict counts of its claims, so a green summary never reads as covering
    more than was run.

    >>> Scope("mlp", "MLP 784-256-256-10 on the first 1000 fashion-mnist images, seeds 0–7", ["E7.0-mlp"]).claims
    ['E7.0-mlp']
    """

    label: str
    what: str
    claims: list[str] = field(default_factory=list)


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
    """Read a CSV written by :func:`samkit.experiments.runner.write_csv` (UTF-8) back into a :class:`Table`."""
    with open(path, newline="", encoding="utf-8") as fh:
        return table_from_text(fh.read())


def table_from_text(text: str) -> Table:
    """A :class:`Table` from the text of a CSV written by :func:`samkit.experiments.runner.write_csv`.

    >>> table_from_text("a,b\\n1,x\\n").rows
    [{'a': 1, 'b': 'x'}]
    """
    return Table([{k: _convert(v) for k, v in row.items()} for row in csv.DictReader(io.StringIO(text, newline=""))])


class Experiment:
    """Base class of the paper's experiments; subclass and register with :func:`samkit.experiments.register`.

    Subclasses set ``name``, ``title``, ``summary``, ``presets`` (a dict per preset in :data:`PRESETS`,
    all with the same keys, including ``seed``), ``schema`` (a :class:`Param` for every key of the presets;
    rules between keys that a :class:`Param` cannot say go in :meth:`validate`) and implement :meth:`units`,
    :meth:`run_unit`, :meth:`tables`, :meth:`claims` and :meth:`figures`. Bump ``version`` when a change to the
    code makes cached unit results stale. An experiment without a ``schema`` gets its overrides type-checked
    against the preset's values only (the built-in experiments all declare one).
    """

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    version: ClassVar[int] = 1
    presets: ClassVar[dict[str, dict[str, Any]]] = {}
    schema: ClassVar[dict[str, Param]] = {}
    #: True when units train with torch on ``device="auto"`` (CUDA when visible): such units get a GPU share on
    #: executors that schedule GPUs (``--executor ray --gpus-per-unit F``).
    device_units: ClassVar[bool] = False

    def config(self, preset: str = "quick", overrides: Iterable[str] = ()) -> dict[str, Any]:
        """The config of ``preset`` with ``key=value`` overrides applied, checked by :meth:`check_config`."""
        if preset not in self.presets:
            raise ConfigError(f"unknown preset {preset!r} for {self.name} (choose from {', '.join(self.presets)})")
        try:
            config = apply_overrides(self.presets[preset], overrides, self.schema or None)
        except ConfigError as err:
            raise ConfigError(f"{self.name}: {err}") from None
        self.check_config(config)
        return config

    def check_config(self, config: Mapping[str, Any]) -> None:
        """Raise :class:`ConfigError` (prefixed with the experiment's name) unless every key of ``config`` is
        declared in :attr:`schema` and allowed by it, and :meth:`validate` accepts the whole."""
        try:
            if self.schema:
                unknown = sorted(set(config) - set(self.schema))
                missing = sorted(set(self.schema) - set(config))
                if unknown or missing:
                    raise ConfigError(f"config keys not in the schema: {unknown}; schema keys missing: {missing}")
                for key, param in self.schema.items():
                    param.check(key, config[key], config)
            self.validate(config)
        except ConfigError as err:
            raise ConfigError(f"{self.name}: {err}") from None

    def validate(self, config: Mapping[str, Any]) -> None:
        """Rules between keys that the :attr:`schema` cannot express; raise :class:`ConfigError` on a violation.

        Called by :meth:`check_config` after every key passed its :class:`Param`. The first line of an override's
        docstring is shown by :func:`describe`.
        """

    def check_presets(self) -> None:
        """Check that the schema declares the presets' keys and every preset passes :meth:`check_config`
        (called by :func:`samkit.experiments.register`, so a bad preset fails at import)."""
        for preset in self.presets.values():
            self.check_config(preset)

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

    def analyse(self, config: Mapping[str, Any], data: Mapping[str, Table]) -> Any:
        """What the claims and the figures both need, computed from the tables (override in an experiment that has
        an analysis; read it through :meth:`analysis`, which computes it once)."""
        return None

    def analysis(self, config: Mapping[str, Any], data: Mapping[str, Table]) -> Any:
        """:meth:`analyse` of these tables, computed once: :func:`~samkit.experiments.runner.finalize` hands the
        same ``data`` to :meth:`claims` and :meth:`figures`, so the second call reuses the first's result."""
        key = stable_hash(dict(config))
        memo = getattr(self, "_analysis_memo", None)
        if memo is not None and memo[0] is data and memo[1] == key:
            return memo[2]
        result = self.analyse(config, data)
        self._analysis_memo = (data, key, result)
        return result

    def figures(self, config: Mapping[str, Any], data: Mapping[str, Table], fig_dir: Path) -> list[Figure]:
        """Draw the figures into ``fig_dir`` from the tables read back from disk."""
        raise NotImplementedError

    def scope(self, config: Mapping[str, Any]) -> list[Scope]:
        """What the claims that depend on trained networks and data were judged on (one :class:`Scope` per
        architecture and data set), for the report's summary; none for claims about formulas (the default)."""
        return []

    def findings(self, config: Mapping[str, Any], data: Mapping[str, Table], claims: Sequence[Claim]) -> list[str]:
        """Findings the report's summary states beside the verdicts, each a sentence computed from the tables and
        the :meth:`claims` judged on them (e.g. where a claim reverses, with the mechanism's numbers); none by
        default."""
        return []

    def missing(self, config: Mapping[str, Any]) -> str | None:
        """What this experiment needs and cannot find (e.g. a dataset), or ``None`` when it can run.

        Checked for every experiment before the first unit of a run starts, so a missing prerequisite is reported
        at once instead of stopping a long run half way. :meth:`missing_if_fails` turns a loader into this.
        """
        return None

    @staticmethod
    def missing_if_fails(load: Callable[[], Any]) -> str | None:
        """``None`` when ``load()`` succeeds, else its :class:`ConfigError`'s message (for :meth:`missing`).

        >>> def absent(): raise ConfigError("Fashion-MNIST not found")
        >>> Experiment.missing_if_fails(absent), Experiment.missing_if_fails(lambda: 1)
        ('Fashion-MNIST not found', None)
        """
        try:
            load()
        except ConfigError as err:
            return str(err)
        return None

    def resources(self, params: Mapping[str, Any]) -> dict[str, float]:
        """The resources one unit needs, as Ray resource requests (``num_cpus``, ``num_gpus``; fractions allowed).

        The default is one CPU; a unit that trains with torch may ask for a GPU share when CUDA is there.
        """
        return {"num_cpus": 1}


def _short(value: Any, limit: int = 4) -> str:
    """A config value in a few characters: numbers with ``:g``, long lists elided."""
    if isinstance(value, (list, tuple)):
        items = [_short(v) for v in value]
        if len(items) > limit:
            items = items[: limit - 1] + ["…", items[-1]]
            return f"[{', '.join(items)}] ({len(value)})"
        return f"[{', '.join(items)}]"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def describe(exp: Experiment) -> str:
    """The experiment's config keys as a text table: key, type, value in each preset, what is allowed, meaning.

    Meant for ``samkit list EXP``: the way to discover the keys that ``--set KEY=VALUE`` accepts.

    >>> class Demo(Experiment):
    ...     name, title = "DEMO", "A demo"
    ...     presets = {p: {"seed": 0, "steps": n} for p, n in (("tiny", 10), ("quick", 100), ("full", 1000))}
    ...     schema = {"seed": Param(int, "random seed", min=0), "steps": Param(int, "number of steps", min=1)}
    >>> print(describe(Demo()))
    DEMO — A demo
    key    type  tiny  quick  full  allowed  description
    seed   int   0     0      0     >= 0     random seed
    steps  int   10    100    1000  >= 1     number of steps
    """
    presets = [p for p in PRESETS if p in exp.presets] + [p for p in exp.presets if p not in PRESETS]
    keys = list(exp.schema) or list(next(iter(exp.presets.values()), {}))
    rows = [["key", "type", *presets, "allowed", "description"]]
    for key in keys:
        param = exp.schema.get(key)
        values = [_short(exp.presets[p].get(key, "")) for p in presets]
        if param is None:
            like = exp.presets[presets[0]][key]
            rows.append([key, type(like).__name__, *values, "(not declared)", ""])
        else:
            rows.append([key, param.type_name(), *values, param.allowed(), param.help])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = [f"{exp.name} — {exp.title}"]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1] for r in rows]
    doc = type(exp).validate.__doc__ if type(exp).validate is not Experiment.validate else None
    if doc:
        lines.append("also: " + " ".join(doc.strip().split("\n\n")[0].split()))
    return "\n".join(line.rstrip() for line in lines)
