"""The report writer: ``DIR/index.html``, ``DIR/README.md`` and ``DIR/claims.json`` from the saved results.

The report is a function of the results folder alone. For each experiment folder it reads ``result.json`` (claims
with verdicts, figures with captions), checks it against ``config.json`` and the tables it records (a damaged,
edited or out-of-date experiment is shown as such, never with its stale verdicts) and reads ``failure.json`` (the
last run did not finish). The pages are rendered from Jinja2 templates (``samkit/report/templates``, autoescaped):
a summary first (verdict counts, then every FAIL, NOT EXERCISED claim and experiment that did not run, one line
each with a link), a table of contents, then per experiment one compact claims table (each setting stated once)
beside its figures, and the provenance. Every link is relative, so the folder can be moved or served.

Example:
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> paths = write_report(d, [])
    >>> sorted(p.name for p in paths)
    ['README.md', 'claims.json', 'index.html']
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from samkit.experiments.base import INCONCLUSIVE, NOT_EXERCISED, VERDICTS, ConfigError
from samkit.experiments.runner import (
    atomic_write_text,
    load_tables,
    read_config,
    read_json,
    verify_config,
    write_json,
)

__all__ = ["collect", "collect_results", "write_report", "summary", "verdict_counts", "VERDICTS"]  # VERDICTS from base

#: What a problem's ``kind`` means, in the report's words.
_KINDS = {"missing": "did not run", "error": "did not finish", "damaged": "damaged"}
_TITLE = "The Crucial Role of Normalization in Sharpness-Aware Minimization"


# ---------------------------------------------------------------------------------------------- reading the folder
def _sort_key(name: str) -> tuple:
    from samkit.experiments import _sort_key as key

    return key(name)


def _inspect(exp_dir: Path) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """``(result, problem)`` of one experiment folder: the result to show (None when it cannot be trusted) and
    what is wrong (None when nothing is)."""
    name = exp_dir.name
    failure = None
    if (exp_dir / "failure.json").exists():
        try:
            failure = read_json(exp_dir / "failure.json")
        except ConfigError as err:
            return None, _problem(name, str(err), "damaged")
        if not isinstance(failure, dict):
            return None, _problem(name, f"{str(exp_dir / 'failure.json')!r} is not a samkit failure record", "damaged")
    result = None
    try:
        meta = read_config(exp_dir) if (exp_dir / "config.json").exists() else None
        if meta is not None:
            if meta["experiment"] != name:
                raise ConfigError(
                    f"{str(exp_dir / 'config.json')!r} is the config of experiment {meta['experiment']!r}, not of "
                    f"{name!r}; rerun `samkit run {name}`"
                )
            # re-derived from (preset, overrides): not edited
            verify_config(_experiment(name, exp_dir), meta, exp_dir / "config.json")
            load_tables(exp_dir, meta["tables"])  # DamagedDataError (a ConfigError) on a truncated or edited table
        if (exp_dir / "result.json").exists():
            if meta is None:
                raise ConfigError(f"{str(exp_dir)!r} has a result.json but no config.json; rerun `samkit run {name}`")
            result = _checked_result(read_json(exp_dir / "result.json"), exp_dir)
            if result["experiment"] != name or result.get("config_hash") != meta.get("config_hash"):
                raise ConfigError(
                    f"{str(exp_dir / 'result.json')!r} is out of date (its config hash differs from config.json's); "
                    f"run `samkit report {exp_dir.parent}` to recompute it"
                )
        elif meta is not None and failure is None:
            raise ConfigError(f"{name} has data but no result.json; run `samkit report {exp_dir.parent}` to judge it")
    except ConfigError as err:
        return None, _problem(name, str(err), "damaged")
    if failure is not None:
        kind = failure.get("kind") if failure.get("kind") in _KINDS else "error"
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


def _checked_result(result: Any, exp_dir: Path) -> dict[str, Any]:
    ok = (
        isinstance(result, dict)
        and isinstance(result.get("experiment"), str)
        and isinstance(result.get("claims"), list)
        and all(isinstance(c, dict) for c in result["claims"])
        and isinstance(result.get("figures", []), list)
    )
    if not ok:
        raise ConfigError(f"{str(exp_dir / 'result.json')!r} is not a samkit result; run `samkit report` to redo it")
    return result


def _problem(name: str, reason: str, kind: str, previous: bool = False) -> dict[str, Any]:
    return {"experiment": name, "reason": reason, "kind": kind, "previous": previous}


def _title_of(name: str, exp_dir: Path) -> str:
    """The title of an experiment whose result cannot be shown: from its (stale) result.json, else samkit's
    registry, else nothing."""
    try:
        title = read_json(exp_dir / "result.json").get("title")
        if isinstance(title, str):
            return title
    except (ConfigError, AttributeError):
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


def collect(out: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(results, problems)`` of the results folder ``out``, each ordered by experiment (E1, E2, ...).

    ``results``: the ``result.json`` of every experiment whose data checks out. ``problems``: one dict per
    experiment that did not run or did not finish in its last run (``kind`` ``"missing"`` or ``"error"``, from
    its ``failure.json``; ``previous`` says whether the results of an earlier complete run are still shown) or
    whose files are damaged or out of date (``kind`` ``"damaged"``; its results are left out).
    """
    out = Path(out)
    dirs = sorted(
        {p.parent for pattern in ("*/config.json", "*/result.json", "*/failure.json") for p in out.glob(pattern)},
        key=lambda d: _sort_key(d.name),
    )
    results, problems = [], []
    for d in dirs:
        result, problem = _inspect(d)
        if result is not None:
            results.append(result)
        if problem is not None:
            if result is None:
                problem["title"] = _title_of(d.name, d)
            problems.append(problem)
    return results, problems


def collect_results(out: Path) -> list[dict[str, Any]]:
    """The results of :func:`collect` (the experiments whose data checks out)."""
    return collect(out)[0]


# ---------------------------------------------------------------------------------------------- counting
def _verdict(claim: Mapping[str, Any]) -> str:
    """PASS, FAIL, INCONCLUSIVE or NOT EXERCISED (results written before the other verdicts existed have only
    ``passed``)."""
    v = claim.get("verdict")
    return v if v in VERDICTS else ("PASS" if claim.get("passed") else "FAIL")


def summary(results: Sequence[Mapping[str, Any]]) -> tuple[int, int]:
    """``(passed, total)`` over all claims."""
    claims = [c for r in results for c in r["claims"]]
    return sum(_verdict(c) == "PASS" for c in claims), len(claims)


def verdict_counts(results: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """How many claims have each verdict, in :data:`VERDICTS` order.

    >>> verdict_counts([{"claims": [{"verdict": "PASS"}, {"passed": False}, {"verdict": "NOT EXERCISED"}]}])
    {'FAIL': 1, 'INCONCLUSIVE': 0, 'NOT EXERCISED': 1, 'PASS': 1}
    """
    counts = Counter(_verdict(c) for r in results for c in r["claims"])
    return {v: counts.get(v, 0) for v in VERDICTS}


def _not_exercised(counts: Mapping[str, int]) -> str:
    """What the claims that neither PASS nor FAIL mean, e.g. `` (1 INCONCLUSIVE: ...)``."""
    notes = []
    if counts.get(INCONCLUSIVE):
        notes.append(
            f"{counts[INCONCLUSIVE]} INCONCLUSIVE: the interval over seeds straddles the threshold, more seeds "
            "would decide"
        )
    if counts.get(NOT_EXERCISED):
        notes.append(f"{counts[NOT_EXERCISED]} NOT EXERCISED: the data did not meet their precondition")
    return f" ({'; '.join(notes)})" if notes else ""


# ---------------------------------------------------------------------------------------------- the page's model
_PATH_SAFE = "/:@!$&()*+,;=~"  # characters a URL path may hold as they are (RFC 3986), "'" excluded


def _href(*parts: str) -> str:
    """A relative link to a file of the report folder: ``./`` (so no part can become a URL scheme) and the
    parts, percent-encoded where a URL path needs it.

    >>> _href("E1", "figures/a b#1.png")
    './E1/figures/a%20b%231.png'
    """
    return "./" + "/".join(quote(str(p), safe=_PATH_SAFE) for p in parts)


def _anchor(*parts: Any) -> str:
    """An HTML id made of letters, digits, ``-``, ``_`` and ``.``."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", "-".join(str(p) for p in parts)).strip("-") or "x"


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _section(name: str, result: Mapping[str, Any] | None, problem: Mapping[str, Any] | None) -> dict[str, Any]:
    anchor = _anchor(name)
    sec: dict[str, Any] = {
        "name": name,
        "anchor": anchor,
        "title": _text(result.get("title")) if result else _text((problem or {}).get("title")),
        "summary": _text(result.get("summary")) if result else "",
        "problem": None,
        "counts": verdict_counts([result]) if result else dict.fromkeys(VERDICTS, 0),
        "groups": [],
        "figures": [],
        "info": None,
        "result_href": _href(name, "result.json") if result else None,
    }
    if problem is not None:
        sec["problem"] = {
            "kind": problem["kind"],
            "label": _KINDS.get(problem["kind"], "did not finish"),
            "reason": _sentence(_text(problem["reason"]), name),
            "previous": bool(problem.get("previous")),
            "note": " The results shown are those of its previous complete run."
            if problem.get("previous")
            else " Its verdicts are not shown."
            if problem["kind"] == "damaged"
            else "",
        }
    if result is None:
        return sec
    figures = [f for f in result.get("figures", []) if isinstance(f, dict)]
    fig_anchor = {_text(f.get("file")): _anchor(name, "fig", i) for i, f in enumerate(figures)}
    groups: dict[str, list[dict[str, Any]]] = {}
    for c in result["claims"]:
        verdict = _verdict(c)
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
                "claims": [(_text(c), _anchor(name, c)) for c in f.get("claims", [])],
                "data": [(Path(_text(d)).name, _href(name, _text(d))) for d in f.get("data", [])],
            }
        )
    run = result.get("run") if isinstance(result.get("run"), dict) else {}
    seconds = run.get("seconds")
    sec["info"] = {
        "preset": _text(result.get("preset")),
        "overrides": " ".join(map(str, result.get("overrides") or [])),
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
            lines.append({"kind": p["kind"], "label": p["label"], "href": "#" + s["anchor"],
                          "text": f"{s['name']}: {p['reason']}{shown}"})  # fmt: skip
    for verdict in ("FAIL", INCONCLUSIVE, NOT_EXERCISED):
        for s in sections:
            for g in s["groups"]:
                for c in g["claims"]:
                    if c["verdict"] == verdict:
                        lines.append({"kind": c["css"], "label": verdict, "href": "#" + c["anchor"],
                                      "text": f"{c['id']}: {c['statement']} — measured {c['measured']}"})  # fmt: skip
    return lines


def _context(results: Sequence[Mapping[str, Any]], problems: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    by_name = {str(r["experiment"]): r for r in results}
    problem_of = {str(p["experiment"]): p for p in problems}
    names = sorted(set(by_name) | set(problem_of), key=_sort_key)
    sections = [_section(n, by_name.get(n), problem_of.get(n)) for n in names]
    counts = verdict_counts(results)
    passed, total = summary(results)
    prov = next((r.get("provenance") for r in results if isinstance(r.get("provenance"), dict)), None)
    return {
        "title": _TITLE,
        "passed": passed,
        "total": total,
        "counts": counts,
        "not_exercised_note": _not_exercised(counts),
        "not_run": len(problems),
        "not_run_note": f" {len(problems)} experiment{'s' if len(problems) > 1 else ''} did not run, did not finish "
        f"or {'are' if len(problems) > 1 else 'is'} damaged."
        if problems
        else "",
        "sections": sections,
        "attention": _attention(sections),
        "provenance": None
        if prov is None
        else {
            k: _text(prov.get(k)) for k in ("samkit", "torch", "numpy", "python", "git_commit", "platform")
        },  # fmt: skip
    }


# ---------------------------------------------------------------------------------------------- rendering
def _environment() -> Any:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("samkit.report", "templates"),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html.j2",), default_for_string=True),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["md"] = _md_cell
    return env


def _md_cell(text: Any) -> str:
    """Text made safe for one Markdown table cell (``|`` escaped, no line breaks)."""
    return " ".join(str(text).split()).replace("|", "\\|")


def write_report(
    out: Path,
    results: Sequence[Mapping[str, Any]] | None = None,
    problems: Sequence[Mapping[str, Any]] | None = None,
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
    env = _environment()
    paths = [out / "index.html", out / "README.md", out / "claims.json"]
    atomic_write_text(paths[0], env.get_template("index.html.j2").render(ctx))
    atomic_write_text(paths[1], env.get_template("README.md.j2").render(ctx))
    write_json(
        paths[2],
        {
            "passed": ctx["passed"],
            "total": ctx["total"],
            "all_pass": ctx["passed"] == ctx["total"] and not problems,
            "verdicts": ctx["counts"],
            "experiments": [
                {"experiment": r["experiment"], "preset": r.get("preset"), "config_hash": r.get("config_hash")}
                for r in results
            ],
            "not_run": [{k: p[k] for k in ("experiment", "kind", "reason", "previous") if k in p} for p in problems],
            "claims": [c for r in results for c in r["claims"]],
        },
    )
    return paths
