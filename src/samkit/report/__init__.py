"""The report writer: ``DIR/index.html``, ``DIR/README.md`` and ``DIR/claims.json`` from the saved results.

The report is a function of the results folder alone. For each experiment folder it reads ``result.json`` (claims
with verdicts, figures with captions), checks it against ``config.json`` and the tables it records (a damaged,
edited or out-of-date experiment is shown as such, never with its stale verdicts) and reads ``failure.json`` (the
last run did not finish). The pages are rendered from Jinja2 templates (``samkit/report/templates``, autoescaped):
a summary first (verdict counts, then every FAIL, NOT EXERCISED claim and experiment that did not run, one line
each with a link), a table of contents, then per experiment one compact claims table (each setting stated once)
beside its figures, and the provenance. Every link is relative, so the folder can be moved or served.

The folder may come from someone else: one experiment whose files do not check out (whatever is wrong with them) is
reported as damaged, naming the file and what is wrong, and the others are still reported; nothing is read or
written through a symbolic link inside the folder; an experiment a run is writing (its ``.lock`` is held) is reported
as running, not judged; a table is decoded only once its checksum has matched; and README.md escapes every text it
shows, as the HTML page does (Markdown has no autoescape: see :func:`_md_text`).

Example:
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> paths = write_report(d, [])
    >>> sorted(p.name for p in paths)
    ['README.md', 'claims.json', 'index.html']
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import hashlib
import io
import os
import re
import stat
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from samkit._io import UnsafePathError, open_regular, refuse_links
from samkit.experiments.base import INCONCLUSIVE, NOT_EXERCISED, VERDICTS, ConfigError
from samkit.experiments.judging import finalize
from samkit.experiments.results import (
    PROBLEM_KINDS,
    ExperimentResult,
    Problem,
    Tally,
    experiment_dirs,
    sort_key,
    verdict_of,
)
from samkit.experiments.store import (
    DamagedDataError,
    atomic_write_text,
    read_config,
    read_json,
    safe_name,
    verify_config,
    write_json,
)

__all__ = ["collect", "collect_results", "rejudge", "write_report", "summary", "verdict_counts", "VERDICTS"]
_TITLE = "The Crucial Role of Normalization in Sharpness-Aware Minimization"
#: What reading a file someone else may have written can raise besides a :class:`ConfigError` (a value of the wrong
#: type or shape, a missing key, bytes that do not decode, a file that cannot be read, JSON nested too deep).
_READ_ERRORS = (LookupError, TypeError, AttributeError, ValueError, OSError, RecursionError, csv.Error)
#: ... and what judging such data (an experiment's claims and figures) can raise besides.
_JUDGE_ERRORS = (*_READ_ERRORS, ArithmeticError, RuntimeError)
#: The files of an experiment folder the report reads (or locks) by name: each must be a regular file when present.
_FILES = ("config.json", "result.json", "failure.json", ".lock")


# ---------------------------------------------------------------------------------------------- reading the folder
def _one_line(text: Any, limit: int = 400) -> str:
    """``text`` on one line (every run of whitespace one space), at most ``limit`` characters."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _not_regular(path: Path) -> UnsafePathError:
    return UnsafePathError(
        f"{str(path)!r} is not a regular file (a folder, a FIFO or a device); samkit reads only the files it wrote: "
        "remove it"
    )


def _check_folder(out: Path, exp_dir: Path) -> None:
    """Raise :class:`UnsafePathError` when ``exp_dir``, or anything in it, is a symbolic link (``out`` itself may be
    one: the user named it), or when a file the report reads by name is not a regular file (a FIFO would block)."""
    refuse_links(out, exp_dir)
    for name in _FILES:
        try:
            mode = os.lstat(exp_dir / name).st_mode
        except FileNotFoundError:
            continue
        if not stat.S_ISREG(mode):
            raise _not_regular(exp_dir / name)


def _read_bytes(path: Path) -> bytes:
    fd = open_regular(path)
    with os.fdopen(fd, "rb") as fh:
        return fh.read()


@contextlib.contextmanager
def _reading(out: Path, exp_dir: Path) -> Iterator[str | None]:
    """Check that ``exp_dir`` may be read (:func:`_check_folder`) and hold a shared lock on its ``.lock`` while it is
    read: yields ``None``, or who holds the lock when a run is writing there (nothing of it may then be judged: its
    files are half written). The lock file is opened read-only, never created and never followed."""
    _check_folder(out, exp_dir)
    try:
        fd = open_regular(exp_dir / ".lock")
    except FileNotFoundError:
        yield None  # no run ever locked it (an older samkit): nothing to wait for
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            holder = None
        except BlockingIOError:
            holder = _holder(fd)
        yield holder
    finally:
        os.close(fd)  # closing releases the lock


def _holder(fd: int) -> str:
    """Who holds a lock, as the run wrote it into the lock file (``samkit pid N on HOST``), on one short line."""
    try:
        text = os.pread(fd, 200, 0).decode("utf-8", "replace")
    except OSError:
        text = ""
    return _one_line("".join(ch if ch.isprintable() else " " for ch in text), 120) or "another process"


def _check_tables(exp_dir: Path, manifest: Mapping[str, Any]) -> None:
    """Check each table ``config.json`` records: its bytes against the recorded sha256 first, and only then that it
    decodes (UTF-8 CSV) to the recorded number of rows; else a :class:`DamagedDataError` naming the file and what
    is wrong. Nothing is decoded before its checksum has matched."""
    rerun = f"rerun `samkit run {exp_dir.name}` to recompute it from the cached units"
    for name, entry in sorted(manifest.items()):
        path = exp_dir / "data" / safe_name(name)
        if not (isinstance(entry, dict) and isinstance(entry.get("sha256"), str) and type(entry.get("rows")) is int):
            raise DamagedDataError(
                f"{str(exp_dir / 'config.json')!r} records table {_one_line(repr(name), 80)} as "
                f"{_one_line(repr(entry), 80)}, not as its rows and sha256 (written by an older samkit, or edited); "
                f"rerun `samkit run {exp_dir.name}`"
            )
        try:
            raw = _read_bytes(path)
        except FileNotFoundError:
            raise DamagedDataError(f"{str(path)!r} is missing; rerun `samkit run {exp_dir.name}`") from None
        if hashlib.sha256(raw).hexdigest() != entry["sha256"]:
            raise DamagedDataError(
                f"{str(path)!r} is damaged: its sha256 differs from the one config.json records (truncated or "
                f"edited); {rerun}"
            )
        try:
            rows = sum(1 for _ in csv.DictReader(io.StringIO(raw.decode("utf-8"), newline="")))
        except UnicodeDecodeError as err:
            raise DamagedDataError(
                f"{str(path)!r} is damaged: it is not UTF-8 text (byte 0x{raw[err.start]:02x} at offset {err.start}), "
                f"though its sha256 matches the one config.json records (both edited?); {rerun}"
            ) from None
        except csv.Error as err:
            raise DamagedDataError(
                f"{str(path)!r} is damaged: it is not CSV ({_one_line(err, 120)}); {rerun}"
            ) from None
        if rows != entry["rows"]:
            raise DamagedDataError(
                f"{str(path)!r} is damaged: it holds {rows} rows, config.json records {entry['rows']}; {rerun}"
            )


def _inspect(out: Path, exp_dir: Path) -> tuple[ExperimentResult | None, Problem | None, bool]:
    """``(result, problem, readable)`` of one experiment folder: the result to show (None when it cannot be
    trusted), what is wrong (None when nothing is) and whether its files may be read at all (no link, no lock)."""
    name = exp_dir.name
    try:
        with _reading(out, exp_dir) as holder:
            if holder is not None:
                reason = (
                    f"{str(exp_dir)!r} is running (locked by {holder}): its files are being written, so they are "
                    f"not judged; run `samkit report {out}` again once it has finished"
                )
                return None, _problem(name, reason, "running"), False
            return (*_inspect_files(exp_dir), True)
    except UnsafePathError as err:
        return None, _problem(name, str(err), "damaged"), False
    except OSError as err:
        reason = f"{str(exp_dir)!r} could not be read ({type(err).__name__}: {err.strerror or err})"
        return None, _problem(name, reason, "damaged"), False


def _inspect_files(exp_dir: Path) -> tuple[ExperimentResult | None, Problem | None]:
    """:func:`_inspect` of a folder that may be read: every failure lands in the problem, naming the file."""
    name = exp_dir.name
    current = exp_dir / "failure.json"
    failure = None
    result = None
    try:
        if current.exists():
            failure = read_json(current)
            if not isinstance(failure, dict):
                raise ConfigError(f"{str(current)!r} is not a samkit failure record")
        current = exp_dir / "config.json"
        meta = read_config(exp_dir) if current.exists() else None
        if meta is not None:
            if meta["experiment"] != name:
                raise ConfigError(
                    f"{str(current)!r} is the config of experiment {meta['experiment']!r}, not of {name!r}; "
                    f"rerun `samkit run {name}`"
                )
            # re-derived from (preset, overrides): not edited
            verify_config(_experiment(name, exp_dir), meta, current)
            _check_tables(exp_dir, meta["tables"])  # checksums first: a truncated, edited or undecodable table
        current = exp_dir / "result.json"
        if current.exists():
            if meta is None:
                raise ConfigError(f"{str(exp_dir)!r} has a result.json but no config.json; rerun `samkit run {name}`")
            result = _checked_result(read_json(current), exp_dir)
            redo = f"run `samkit report {exp_dir.parent}` to recompute it"
            if result["experiment"] != name or result.get("config_hash") != meta.get("config_hash"):
                raise ConfigError(
                    f"{str(current)!r} is out of date (its config hash differs from config.json's); {redo}"
                )
            recorded = sorted(f"data/{safe_name(n)}" for n in meta["tables"])
            if "data" in result and sorted(map(str, result["data"])) != recorded:
                raise ConfigError(
                    f"{str(current)!r} is out of date: it was judged from other tables than those config.json "
                    f"records ({', '.join(recorded) or 'none'}); {redo}"
                )
        elif meta is not None and failure is None:
            raise ConfigError(f"{name} has data but no result.json; run `samkit report {exp_dir.parent}` to judge it")
    except (ConfigError, UnsafePathError) as err:
        return None, _problem(name, str(err), "damaged")
    except _READ_ERRORS as err:
        reason = (
            f"{str(current)!r} is not what samkit writes ({type(err).__name__}: {_one_line(err, 200)}): written by "
            f"an older samkit, or edited; rerun `samkit run {name}`"
        )
        return None, _problem(name, reason, "damaged")
    if failure is not None:
        kind = failure.get("kind") if failure.get("kind") in PROBLEM_KINDS else "error"
        kind = "error" if kind == "running" else kind  # only a held lock says that a run is running
        return result, _problem(name, str(failure.get("reason", "unknown reason")), kind, previous=result is not None)
    return result, None


def _experiment(name: str, exp_dir: Path) -> Any:
    """The registered experiment ``name``, whose schema re-derives the folder's config; a :class:`ConfigError`
    when samkit does not know it (its config could not be checked, so its verdicts are not shown)."""
    from samkit.experiments import get

    try:
        return get(name)
    except ConfigError:
        raise ConfigError(
            f"{str(exp_dir / 'config.json')!r} belongs to experiment {name!r}, which this samkit does not know: its "
            "config cannot be checked against its preset and overrides"
        ) from None


def _checked_result(result: Any, exp_dir: Path) -> ExperimentResult:
    figures = result.get("figures", []) if isinstance(result, dict) else None
    ok = (
        isinstance(result, dict)
        and isinstance(result.get("experiment"), str)
        and isinstance(result.get("claims"), list)
        and all(isinstance(c, dict) for c in result["claims"])
        and isinstance(figures, list)
        and all(
            isinstance(f.get("claims", []), list) and isinstance(f.get("data", []), list)
            for f in figures
            if isinstance(f, dict)
        )
        and isinstance(result.get("overrides") or [], list)
        and isinstance(result.get("run") or {}, dict)
        and isinstance(result.get("data", []), list)
    )
    if not ok:
        raise ConfigError(f"{str(exp_dir / 'result.json')!r} is not a samkit result; run `samkit report` to redo it")
    return ExperimentResult(result)


def _problem(name: str, reason: str, kind: str, previous: bool = False) -> Problem:
    return Problem(name, _one_line(reason, 1000), kind, previous)


def _title_of(name: str, exp_dir: Path, readable: bool = True) -> str:
    """The title of an experiment whose result cannot be shown: from its (stale) result.json when its files may be
    read, else samkit's registry, else nothing."""
    if readable:
        try:
            title = read_json(exp_dir / "result.json").get("title")
            if isinstance(title, str):
                return title
        except (ConfigError, *_READ_ERRORS):
            pass
    from samkit.experiments import get

    try:
        return get(name).title
    except (ConfigError, ImportError, RuntimeError):
        return ""


def _sentence(reason: str, name: str) -> str:
    """A problem's reason as a sentence, without a leading ``NAME:`` or ``NAME did not run:`` (the report says it).

    >>> _sentence("E7 did not run: Fashion-MNIST is missing", "E7")
    'Fashion-MNIST is missing.'
    """
    text = re.sub(rf"^{re.escape(name)}( did not run)?:\s*", "", reason.strip())
    return text if text.endswith((".", "!", "?")) else text + "."


def collect(out: Path, errors: Mapping[str, str] | None = None) -> tuple[list[ExperimentResult], list[Problem]]:
    """``(results, problems)`` of the results folder ``out``, each ordered by experiment (E1, E2, ...).

    ``results``: the ``result.json`` of every experiment whose data checks out. ``problems``: one :class:`Problem` per
    experiment that did not run or did not finish in its last run (``kind`` ``"missing"`` or ``"error"``, from
    its ``failure.json``; ``previous`` says whether the results of an earlier complete run are still shown), whose
    files are damaged, out of date or unsafe to read (``kind`` ``"damaged"``: a file that does not check out, a
    symbolic link; its results are left out) or that a run is writing now (``kind`` ``"running"``: its lock is
    held; its files are not judged). Every problem names the file and what is wrong; one experiment's problem
    never stops the others from being reported. ``errors`` (experiment name -> reason, from :func:`rejudge`)
    are reported as damaged experiments with that reason.
    """
    out = Path(out)
    errors = dict(errors or {})
    results: list[ExperimentResult] = []
    problems: list[Problem] = []
    result: ExperimentResult | None
    problem: Problem | None
    for d in experiment_dirs(out):
        if d.name in errors:
            result, problem, readable = None, _problem(d.name, errors[d.name], "damaged"), False
        else:
            result, problem, readable = _inspect(out, d)
        if result is not None:
            results.append(result)
        if problem is not None:
            if result is None:
                problem.title = _title_of(d.name, d, readable)
            problems.append(problem)
    return results, problems


def rejudge(out: Path) -> tuple[dict[str, str], list[str]]:
    """Recompute the ``result.json`` (claims and figures) of every experiment folder of ``out`` from its verified
    config and tables (:func:`~samkit.experiments.runner.finalize`); what ``samkit report DIR`` does before
    :func:`collect`. Returns ``(errors, warnings)``.

    A folder that holds a link, that a run has locked, whose config does not check out or whose tables do not match
    their recorded checksums is left as it is (:func:`collect` reports it, with the reason): nothing is read through
    a link, nothing is written while a run writes (a shared lock is held while judging) and no table is decoded
    before its checksum has matched. ``errors`` maps each experiment whose verified files could still not be judged
    (a config or a table of an older layout: a missing key, a column of another type) to the reason, for
    ``collect(out, errors)``; ``warnings`` says which experiments this samkit does not know (not redrawn).
    """
    from samkit.experiments import get

    out = Path(out)
    errors: dict[str, str] = {}
    warnings: list[str] = []
    for d in experiment_dirs(out):
        what = f"{str(d / 'config.json')!r} and the tables it records"
        try:
            with _reading(out, d) as holder:
                if holder is not None or not (d / "config.json").exists():
                    continue  # a run is writing it, or nothing to judge: collect() says which
                meta = read_config(d)
                name = meta["experiment"]
                if name != d.name:
                    continue  # config.json names another experiment: collect() reports the folder as damaged
                try:
                    exp = get(name)
                except ConfigError as err:
                    warnings.append(f"{name} not redrawn ({err}); its saved results are reported as they are")
                    continue
                _check_tables(d, meta["tables"])  # before finalize() decodes any table
                if (d / "result.json").exists():  # finalize() reads its run info: name it when it cannot be read
                    what = repr(str(d / "result.json"))
                    read_json(d / "result.json")
                    what = f"{str(d / 'config.json')!r} and the tables it records"
                finalize(exp, d)
        except (ConfigError, UnsafePathError):
            continue  # damaged, edited or linked: collect() reports it, with the reason
        except _JUDGE_ERRORS as err:
            errors[d.name] = (
                f"{what} could not be judged by this samkit ({type(err).__name__}: {_one_line(err, 200)}): written "
                f"by an older samkit, or edited; rerun `samkit run {d.name}`"
            )
    return errors, warnings


def collect_results(out: Path) -> list[ExperimentResult]:
    """The results of :func:`collect` (the experiments whose data checks out)."""
    return collect(out)[0]


# ---------------------------------------------------------------------------------------------- counting
def summary(results: Sequence[Mapping[str, Any]]) -> tuple[int, int]:
    """``(passed, total)`` over all claims (:class:`~samkit.experiments.results.Tally`)."""
    tally = Tally.of(results)
    return tally.passed, tally.total


def verdict_counts(results: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """How many claims have each verdict, in :data:`VERDICTS` order (:class:`~samkit.experiments.results.Tally`).

    >>> verdict_counts([{"claims": [{"passed": True}, {"passed": False}, {"passed": True, "exercised": False}]}])
    {'FAIL': 1, 'INCONCLUSIVE': 0, 'NOT EXERCISED': 1, 'PASS': 1}
    """
    return dict(Tally.of(results).counts)


# ---------------------------------------------------------------------------------------------- the page's model
_PATH_SAFE = "/:@!$&()*+,;=~"  # characters a URL path may hold as they are (RFC 3986), "'" excluded


def _href(*parts: str) -> str:
    """A relative link to a file of the report folder: ``./`` (so no part can become a URL scheme) and the
    parts, percent-encoded where a URL path needs it, without ``.`` and ``..`` segments (a link cannot leave the
    folder).

    >>> _href("E1", "figures/a b#1.png"), _href("E1", "../../etc/passwd")
    ('./E1/figures/a%20b%231.png', './E1/etc/passwd')
    """
    segments = "/".join(str(p) for p in parts).split("/")
    return "./" + "/".join(quote(s, safe=_PATH_SAFE) for s in segments if s not in (".", ".."))


def _anchor(*parts: Any) -> str:
    """An HTML id made of letters, digits, ``-``, ``_`` and ``.``."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", "-".join(str(p) for p in parts)).strip("-") or "x"


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _items(value: Any) -> list[Any]:
    """``value`` when it is a list, else no items (a result.json field of another shape shows nothing)."""
    return value if isinstance(value, list) else []


def _section(name: str, result: Mapping[str, Any] | None, problem: Problem | None) -> dict[str, Any]:
    anchor = _anchor(name)
    sec: dict[str, Any] = {
        "name": name,
        "anchor": anchor,
        "title": _text(result.get("title")) if result else _text(problem.title if problem else ""),
        "summary": _text(result.get("summary")) if result else "",
        "problem": None,
        "counts": dict(Tally.of([result] if result else []).counts),
        "groups": [],
        "figures": [],
        "info": None,
        "result_href": _href(name, "result.json") if result else None,
    }
    if problem is not None:
        note = ""
        if problem.previous:
            note = " The results shown are those of its previous complete run."
        elif problem.kind == "damaged":
            note = " Its verdicts are not shown."
        sec["problem"] = {
            "kind": problem.kind,
            "label": problem.label,
            "reason": _sentence(_text(problem.reason), name),
            "previous": problem.previous,
            "note": note,
        }
    if result is None:
        return sec
    figures = [f for f in _items(result.get("figures")) if isinstance(f, dict)]
    fig_anchor = {_text(f.get("file")): _anchor(name, "fig", i) for i, f in enumerate(figures)}
    groups: dict[str, list[dict[str, Any]]] = {}
    for c in _items(result.get("claims")):
        if not isinstance(c, dict):
            continue
        verdict = verdict_of(c)
        groups.setdefault(_text(c.get("setting")), []).append(
            {
                "id": _text(c.get("id")),
                "anchor": _anchor(name, c.get("id")),
                "statement": _text(c.get("statement")),
                "prediction": _text(c.get("prediction")),
                "measured": _text(c.get("measured")),
                "tolerance": _text(c.get("tolerance")),
                "verdict": verdict,
                "css": verdict.replace(" ", "-"),
                "figure": fig_anchor.get(_text(c.get("figure"))),
            }
        )
    sec["groups"] = [{"setting": s, "claims": cs} for s, cs in groups.items()]
    for f in figures:
        sec["figures"].append(
            {
                "anchor": fig_anchor[_text(f.get("file"))],
                "src": _href(name, "figures", _text(f.get("file"))),
                "title": _text(f.get("title")),
                "caption": _text(f.get("caption")),
                "claims": [(_text(c), _anchor(name, c)) for c in _items(f.get("claims"))],
                "data": [(Path(_text(d)).name, _href(name, _text(d))) for d in _items(f.get("data"))],
            }
        )
    run: Mapping[str, Any] = result["run"] if isinstance(result.get("run"), dict) else {}
    seconds = run.get("seconds")
    sec["info"] = {
        "preset": _text(result.get("preset")),
        "overrides": " ".join(map(str, _items(result.get("overrides")))),
        "config_hash": _text(result.get("config_hash")),
        "units": _text(run.get("units", "")),
        "cached": _text(run.get("units_cached", 0)),
        "seconds": _seconds(seconds, run.get("unit_seconds")),
    }
    return sec


def _seconds(wall: Any, units: Any) -> str:
    """The time column, e.g. ``151.3 s (units 215 s)``: when the experiment finished, counted from the start of the
    run (experiments share the workers, so this is not its own cost), and the compute time of the units it ran
    (cached ones excluded).

    >>> _seconds(151.26, 215.4), _seconds(3.0, 0.0), _seconds(None, 1.0)
    ('151.3 s (units 215 s)', '3.0 s', '')
    """
    if not isinstance(wall, (int, float)):
        return ""
    if isinstance(units, (int, float)) and units > 0:
        return f"{wall:.1f} s (units {units:.0f} s)"
    return f"{wall:.1f} s"


def _attention(sections: Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
    """One line per experiment that did not run or is damaged, then per FAIL, INCONCLUSIVE and NOT EXERCISED claim."""
    lines = []
    for s in sections:
        if s["problem"] is not None:
            p = s["problem"]
            shown = " The results shown are those of its previous complete run." if p["previous"] else ""
            text = f"{s['name']}: {p['reason']}{shown}"
            lines.append({"kind": p["kind"], "label": p["label"], "href": "#" + s["anchor"], "text": text})
    for verdict in ("FAIL", INCONCLUSIVE, NOT_EXERCISED):
        for s in sections:
            for g in s["groups"]:
                for c in g["claims"]:
                    if c["verdict"] == verdict:
                        text = f"{c['id']}: {c['statement']} — measured {c['measured']}"
                        lines.append({"kind": c["css"], "label": verdict, "href": "#" + c["anchor"], "text": text})
    return lines


def _context(results: Sequence[Mapping[str, Any]], problems: Sequence[Problem]) -> dict[str, Any]:
    by_name = {str(r["experiment"]): r for r in results}
    problem_of = {p.experiment: p for p in problems}
    names = sorted(set(by_name) | set(problem_of), key=sort_key)
    sections = [_section(n, by_name.get(n), problem_of.get(n)) for n in names]
    tally = Tally.of(results)
    prov = next((r.get("provenance") for r in results if isinstance(r.get("provenance"), dict)), None)
    keys = ("samkit", "torch", "numpy", "python", "git_commit", "platform")
    return {
        "title": _TITLE,
        "passed": tally.passed,
        "total": tally.total,
        "counts": dict(tally.counts),
        "not_exercised_note": tally.notes(),
        "not_run": len(problems),
        "not_run_note": _not_run(problems),
        "sections": sections,
        "attention": _attention(sections),
        "scopes": _scopes(results),
        "findings": [
            {"experiment": _text(r.name), "href": "#" + _anchor(r.name), "text": _text(f)}
            for r in map(ExperimentResult, results)
            for f in r.findings
        ],
        "provenance": None if prov is None else {k: _text(prov.get(k)) for k in keys},
    }


def _scopes(results: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One line per scope (what claims on trained networks were judged on) with the verdict counts of its claims,
    e.g. ``{"experiment": "E7", "label": "cnn-small", "what": "...", "verdicts": "3 PASS, 2 FAIL"}``."""
    lines = []
    for r in map(ExperimentResult, results):
        for sc in r.scope:
            tally = r.scope_tally(sc)
            shown = ("PASS", "FAIL", INCONCLUSIVE, NOT_EXERCISED)
            lines.append(
                {
                    "experiment": _text(r.name),
                    "href": "#" + _anchor(r.name),
                    "label": _text(sc.label),
                    "what": _text(sc.what),
                    "verdicts": ", ".join(f"{tally.counts[v]} {v}" for v in shown if tally.counts[v]) or "no claims",
                    "css": "c-PASS" if tally.total and tally.passed == tally.total else "c-FAIL",
                }
            )
    return lines


def _machine_entry(r: ExperimentResult) -> dict[str, Any]:
    """An experiment's entry in ``claims.json``: name, preset, config hash, scopes (with their verdict counts) and
    findings."""
    return {
        "experiment": r.name,
        "preset": r.get("preset"),
        "config_hash": r.get("config_hash"),
        "scope": [{**vars(sc), "verdicts": dict(r.scope_tally(sc).counts)} for sc in r.scope],
        "findings": r.findings,
    }


def _not_run(problems: Sequence[Problem]) -> str:
    """The summary's sentence on the experiments that did not run, did not finish, are damaged or are running, naming
    them, e.g. `` 1 experiment did not run, did not finish or is damaged: E7.``.

    >>> _not_run([Problem("E4", "edited", "damaged"), Problem("E5", "locked", "running")])
    ' 2 experiments did not run, did not finish, are damaged or are running: E4, E5.'
    """
    if not problems:
        return ""
    n = len(problems)
    verb = "are" if n > 1 else "is"
    running = f", {verb} damaged or {verb} running" if any(p.kind == "running" for p in problems) else ""
    states = f"did not finish{running}" if running else f"did not finish or {verb} damaged"
    names = ", ".join(p.experiment for p in problems)
    return f" {n} experiment{'s' if n > 1 else ''} did not run, {states}: {names}."


# ---------------------------------------------------------------------------------------------- rendering
def _environment(markdown: bool = False) -> Any:
    """The Jinja2 environment of the HTML page (autoescaped) or, with ``markdown``, of README.md (every value
    escaped for Markdown by :func:`_md_finalize`)."""
    import jinja2

    html = jinja2.select_autoescape(enabled_extensions=("html.j2",), default_for_string=True)
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("samkit.report", "templates"),
        autoescape=False if markdown else html,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        # Markdown has no autoescape: every value is escaped on output unless a filter made it safe already
        finalize=_md_finalize if markdown else None,
    )
    env.filters.update(md=_md_filter, label=_md_label, block=_md_block, code=_md_code, url=_md_url)
    return env


# ---------------------------------------------------------------------------------------------- Markdown escaping
class _Md(str):
    """Markdown that is safe as it is (escaped text, a code span, a link destination): not escaped again."""


def _md_text(value: Any, *, label: bool = False, block: bool = False) -> str:
    r"""Text shown as itself in Markdown (rendered by GitHub or any CommonMark renderer), on one line.

    What could become markup is escaped and nothing else, so ordinary text reads the same raw and rendered: a
    backslash that would escape what follows is doubled; ``&`` that could start an entity becomes ``&amp;`` and
    ``<`` that could start a tag, a comment or an autolink (anything but a space or ``=`` after it: ``η < 2/β``
    and ``y <= 1`` stay) becomes ``&lt;`` (so no HTML reaches the page: a lone ``>`` is text); ``|`` (a table cell)
    and backticks (a code span) are backslash-escaped, and so is ``]`` before ``(``, so no link or image can carry
    a URL. ``label``: text inside ``[...]`` (a link's text, an image's alt), where every bracket is escaped.
    ``block``: text that starts a line, where a leading ``#``, ``>``, ``-``, ``1.`` ... would start a heading, a
    quote or a list and a leading ``[`` a link definition (``[x]: javascript:...``).

    >>> _md_text("<img src=x onerror=alert(1)> [a](javascript:alert(1)) `x` | y >= 0 & z < 1")
    '&lt;img src=x onerror=alert(1)> [a\\](javascript:alert(1)) \\`x\\` \\| y >= 0 & z < 1'
    >>> _md_text("# not a heading", block=True), _md_text("1. not a list", block=True)
    ('\\# not a heading', '1\\. not a list')
    >>> _md_text("[x]: javascript:alert(1)", block=True)
    '\\[x]: javascript:alert(1)'
    """
    text = re.sub(r"\s+", " ", _text(value))
    text = re.sub(r"\\(?=[!-/:-@[-`{-~]|$)", r"\\\\", text)
    text = re.sub(r"&(?=[#A-Za-z0-9])", "&amp;", text)
    text = re.sub(r"<(?![\s=])", "&lt;", text)
    text = text.replace("|", "\\|").replace("`", "\\`")
    if label:
        text = text.replace("[", "\\[").replace("]", "\\]")
    else:
        text = text.replace("](", "\\](")
    if block:
        text = text.lstrip()
        numbered = re.match(r"\d{1,9}(?=[.)])", text)
        if numbered:
            text = text[: numbered.end()] + "\\" + text[numbered.end() :]
        elif text[:1] and text[0] in "#>-+*=~_[":
            text = "\\" + text
    return text


def _md_finalize(value: Any) -> str:
    return value if isinstance(value, _Md) else _md_text(value)


def _md_filter(value: Any) -> _Md:
    """``|md``: escaped text (what every value gets anyway)."""
    return _Md(_md_text(value))


def _md_label(value: Any) -> _Md:
    """``|label``: escaped text inside ``[...]`` (a link's text, an image's alt)."""
    return _Md(_md_text(value, label=True))


def _md_block(value: Any) -> _Md:
    """``|block``: escaped text that starts a line (a paragraph of its own)."""
    return _Md(_md_text(value, block=True))


def _md_code(value: Any) -> _Md:
    """``|code``: a code span that shows ``value`` as it is and that nothing inside can end: its fence is one
    backtick longer than the longest run of backticks inside, and a space pads a backtick at either end.

    >>> print(_md_code("tiny"), _md_code("a=`b` c=``d``"), _md_code("`x`"))
    `tiny` ``` a=`b` c=``d`` ``` `` `x` ``
    """
    text = re.sub(r"\s+", " ", _text(value)).strip()
    if not text:
        return _Md("` `")
    fence = "`" * (max((len(run) for run in re.findall("`+", text)), default=0) + 1)
    pad = " " if text[0] == "`" or text[-1] == "`" else ""
    return _Md(f"{fence}{pad}{text}{pad}{fence}")


def _md_url(href: Any) -> _Md:
    """``|url``: a link destination made by :func:`_href` (percent-encoded, ``./``-relative) with ``(``, ``)`` and
    ``&`` percent-encoded too, so it cannot end early or hold an entity.

    >>> print(_md_url("./E1/figures/a(1)&b.png"))
    ./E1/figures/a%281%29%26b.png
    """
    return _Md(_text(href).replace("&", "%26").replace("(", "%28").replace(")", "%29"))


def write_report(
    out: Path,
    results: Sequence[Mapping[str, Any]] | None = None,
    problems: Sequence[Problem] | None = None,
) -> list[Path]:
    """Write ``index.html``, ``README.md`` and ``claims.json`` into ``out``; return their paths.

    ``results`` and ``problems`` default to :func:`collect` of ``out`` (given ``results`` come without problems
    unless ``problems`` is given too).
    """
    out = Path(out)
    if results is None:
        results, found = collect(out)
        problems = found if problems is None else problems
    problems = list(problems or [])
    ctx = _context(results, problems)
    paths = [out / "index.html", out / "README.md", out / "claims.json"]
    for path in paths:  # written by renaming over them: never through a link, never over a folder
        if path.is_symlink() or (path.exists() and not path.is_file()):
            what = f"a symbolic link (to {os.readlink(path)!r})" if path.is_symlink() else "not a regular file"
            raise UnsafePathError(f"{str(path)!r} is {what}; samkit writes its report only as plain files: remove it")
    page = _environment().get_template("index.html.j2").render(ctx)
    readme = _environment(markdown=True).get_template("README.md.j2").render(ctx)
    atomic_write_text(paths[0], page)
    atomic_write_text(paths[1], readme)
    write_json(
        paths[2],
        {
            "passed": ctx["passed"],
            "total": ctx["total"],
            "all_pass": ctx["passed"] == ctx["total"] and not problems,
            "verdicts": ctx["counts"],
            "experiments": [_machine_entry(ExperimentResult(r)) for r in results],
            "not_run": [
                {"experiment": p.experiment, "kind": p.kind, "reason": p.reason, "previous": p.previous}
                for p in problems
            ],
            "claims": [c for r in results for c in r["claims"]],
        },
    )
    return paths
