"""The result model that the runner, the report and the CLI share: an experiment's result, its claims' verdicts,
an experiment without a result (a :class:`Problem`), the verdict counts and exit code of a run, and the one scan
of a results folder.

A verdict is derived in one place, :attr:`samkit.experiments.base.Claim.verdict`; a claim read back from
``result.json`` becomes a :class:`~samkit.experiments.base.Claim` again (:func:`claim_from_dict`) before anything
counts or prints it, so the runner, the report and ``samkit run``/``samkit report`` can never disagree on one.

Example:
    >>> r = ExperimentResult({"experiment": "E1", "claims": [{"id": "E1.1", "passed": True},
    ...                                                      {"id": "E1.2", "passed": True, "exercised": False}]})
    >>> r.verdicts
    ['PASS', 'NOT EXERCISED']
    >>> t = Tally.of([r])
    >>> t.passed, t.total, t.exit_code([])
    (1, 2, 1)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from samkit.experiments.base import INCONCLUSIVE, NOT_EXERCISED, VERDICTS, Claim, Figure, Scope

__all__ = [
    "ExperimentResult",
    "Problem",
    "Failure",
    "Tally",
    "claim_from_dict",
    "verdict_of",
    "sort_key",
    "experiment_dirs",
    "PROBLEM_KINDS",
    "EXIT_PASS",
    "EXIT_FAIL",
    "EXIT_NOT_RUN",
]

#: Exit codes of ``samkit run``/``reproduce``/``report``: every claim passed; a claim did not pass; an experiment
#: did not run, did not finish or is damaged (``2`` is bad input, given before any work).
EXIT_PASS, EXIT_FAIL, EXIT_NOT_RUN = 0, 1, 3

#: What a :class:`Problem`'s ``kind`` means, in the report's words.
PROBLEM_KINDS = {"missing": "did not run", "error": "did not finish", "damaged": "damaged", "running": "running"}

_CLAIM_FIELDS = frozenset(f.name for f in fields(Claim))


def claim_from_dict(data: Mapping[str, Any]) -> Claim:
    """The :class:`Claim` a ``result.json`` entry holds (missing text fields empty). Results written before
    NOT EXERCISED and INCONCLUSIVE existed carry only ``passed``, which then decides.

    >>> claim_from_dict({"id": "X", "passed": True, "inconclusive": True}).verdict
    'INCONCLUSIVE'
    """
    kw: dict[str, Any] = {"id": "", "statement": "", "setting": "", "prediction": "", "measured": "", "tolerance": ""}
    kw.update({k: v for k, v in data.items() if k in _CLAIM_FIELDS})
    kw["passed"] = bool(kw.get("passed"))
    kw["exercised"] = bool(kw.get("exercised", True))
    kw["inconclusive"] = bool(kw.get("inconclusive", False))
    return Claim(**kw)


def verdict_of(data: Mapping[str, Any]) -> str:
    """The verdict of a claim read back from ``result.json`` (:attr:`Claim.verdict` of :func:`claim_from_dict`).

    >>> verdict_of({"passed": False}), verdict_of({"passed": True, "exercised": False})
    ('FAIL', 'NOT EXERCISED')
    """
    return claim_from_dict(data).verdict


class ExperimentResult(dict):
    """The content of ``result.json`` (a dict, so it is written and read as JSON as it is), with typed accessors:
    its claims as :class:`Claim` objects and their verdicts, its figures as :class:`Figure` objects."""

    @property
    def name(self) -> str:
        """The experiment's name (``E1``, ...)."""
        return str(self["experiment"])

    @property
    def claims(self) -> list[Claim]:
        """The claims, each a :class:`Claim` (its verdict derived by :attr:`Claim.verdict`)."""
        return [claim_from_dict(c) for c in self.get("claims", [])]

    @property
    def verdicts(self) -> list[str]:
        """The verdict of each claim, in order."""
        return [c.verdict for c in self.claims]

    @property
    def figures(self) -> list[Figure]:
        return [Figure(**f) for f in self["figures"]]

    @property
    def scope(self) -> list[Scope]:
        """What the claims on trained networks were judged on (:meth:`Experiment.scope`; entries that are not a
        scope's fields are skipped: a result written before scopes existed has none)."""
        out = []
        for x in self.get("scope") or []:
            if isinstance(x, dict) and isinstance(x.get("label"), str) and isinstance(x.get("what"), str):
                claims = [str(c) for c in x.get("claims") or [] if isinstance(c, str)]
                out.append(Scope(x["label"], x["what"], claims))
        return out

    @property
    def findings(self) -> list[str]:
        """The computed findings (:meth:`Experiment.findings`), as text."""
        return [str(f) for f in self.get("findings") or [] if isinstance(f, str)]

    def scope_tally(self, scope: Scope) -> Tally:
        """The verdicts of the claims judged on ``scope``.

        >>> r = ExperimentResult({"experiment": "E", "claims": [{"id": "a", "passed": True}, {"id": "b"}]})
        >>> r.scope_tally(Scope("net", "a net", ["a"])).counts["PASS"], r.scope_tally(Scope("net", "", ["b"])).total
        (1, 1)
        """
        ids = set(scope.claims)
        return Tally.count(c.verdict for c in self.claims if c.id in ids)


@dataclass
class Problem:
    """An experiment without a trustworthy current result, and why.

    ``kind``: ``"missing"`` (a prerequisite is missing: it did not run), ``"error"`` (a unit raised: it did not
    finish), ``"damaged"`` (its files do not check out, or a link is inside) or ``"running"`` (a run holds its lock).
    ``previous`` says whether the results of an earlier complete run are still shown; ``title`` is the experiment's
    title when no result names it. What ``failure.json`` records is :meth:`to_dict` without those two.
    """

    experiment: str
    reason: str
    kind: str = "error"
    previous: bool = False
    title: str = ""

    @property
    def label(self) -> str:
        """The kind in the report's words."""
        return PROBLEM_KINDS.get(self.kind, "did not finish")

    def to_dict(self) -> dict[str, str]:
        """What ``failure.json`` holds."""
        return {"experiment": self.experiment, "reason": self.reason, "kind": self.kind}


#: The name the runner has always used for an experiment that did not produce a result in this run.
Failure = Problem


@dataclass(frozen=True)
class Tally:
    """How many claims have each verdict (in :data:`~samkit.experiments.base.VERDICTS` order), and what that means
    for a run's exit code."""

    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(VERDICTS, 0))

    @classmethod
    def of(cls, results: Sequence[Mapping[str, Any]]) -> Tally:
        """The tally of every claim of ``results`` (``result.json`` contents or :class:`ExperimentResult`)."""
        return cls.count(v for r in results for v in ExperimentResult(r).verdicts)

    @classmethod
    def count(cls, verdicts: Iterable[str]) -> Tally:
        """The tally of some verdicts.

        >>> Tally.count(["PASS", "FAIL", "PASS"]).counts["PASS"]
        2
        """
        counts = dict.fromkeys(VERDICTS, 0)
        for v in verdicts:
            counts[v] += 1
        return cls(counts)

    @property
    def passed(self) -> int:
        return self.counts["PASS"]

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def exit_code(self, problems: Sequence[Problem]) -> int:
        """:data:`EXIT_NOT_RUN` when an experiment has a problem, else :data:`EXIT_PASS` when every claim passed,
        else :data:`EXIT_FAIL` (a FAIL, INCONCLUSIVE or NOT EXERCISED claim is not a pass)."""
        if problems:
            return EXIT_NOT_RUN
        return EXIT_PASS if self.passed == self.total else EXIT_FAIL

    def notes(self) -> str:
        """What the claims that neither PASS nor FAIL mean, e.g. `` (1 INCONCLUSIVE: ...)``; empty when none.

        >>> Tally({"FAIL": 0, "INCONCLUSIVE": 0, "NOT EXERCISED": 2, "PASS": 3}).notes()
        ' (2 NOT EXERCISED: the data did not meet their precondition)'
        """
        notes = []
        if self.counts.get(INCONCLUSIVE):
            notes.append(
                f"{self.counts[INCONCLUSIVE]} INCONCLUSIVE: the interval over seeds straddles the threshold, more "
                "seeds would decide"
            )
        if self.counts.get(NOT_EXERCISED):
            notes.append(f"{self.counts[NOT_EXERCISED]} NOT EXERCISED: the data did not meet their precondition")
        return f" ({'; '.join(notes)})" if notes else ""


def sort_key(name: str) -> tuple[int, str]:
    """Experiments in the order E1, E2, ..., E10 (numbers compared as numbers), names without digits last.

    >>> sorted(["E10", "E2", "X"], key=sort_key)
    ['E2', 'E10', 'X']
    """
    digits = "".join(ch for ch in name if ch.isdigit())
    return (int(digits) if digits else 10**6, name)


#: The files whose presence makes a folder of a results folder an experiment's (a first run still writing holds only
#: its ``.lock``).
_MARKS = ("config.json", "result.json", "failure.json", ".lock")


def experiment_dirs(out: Path) -> list[Path]:
    """The experiment folders of the results folder ``out`` (those holding a config, result or failure record, or
    a run's lock), ordered E1, E2, ...: the one scan that ``samkit report`` and the report writer use."""
    out = Path(out)
    found = {p.parent for mark in _MARKS for p in out.glob(f"*/{mark}")}
    return sorted(found, key=lambda d: sort_key(d.name))
