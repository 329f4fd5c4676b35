"""The report writer: ``DIR/index.html``, ``DIR/README.md`` and ``DIR/claims.json`` from saved results.

The report reads each experiment's ``DIR/<EXP>/result.json`` (written by
:func:`samkit.experiments.runner.finalize`) and lays out the claims table first (claim, prediction,
measured, tolerance, verdict), then each experiment's figures with their captions and links to the
CSV/JSON files behind them, then the provenance.

Example:
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> paths = write_report(d, [])
    >>> sorted(p.name for p in paths)
    ['README.md', 'claims.json', 'index.html']
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from samkit.experiments.runner import atomic_write_text, read_json, write_json

__all__ = ["collect_results", "write_report", "summary"]


def collect_results(out: Path) -> list[dict[str, Any]]:
    """Every ``OUT/*/result.json``, ordered by experiment name (E1, E2, ...)."""
    from samkit.experiments import _sort_key

    found = [read_json(p) for p in Path(out).glob("*/result.json")]
    return sorted(found, key=lambda r: _sort_key(r["experiment"]))


def summary(results: Sequence[Mapping[str, Any]]) -> tuple[int, int]:
    """``(passed, total)`` over all claims."""
    claims = [c for r in results for c in r["claims"]]
    return sum(bool(c["passed"]) for c in claims), len(claims)


def _md_cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _markdown(results: Sequence[Mapping[str, Any]]) -> str:
    passed, total = summary(results)
    lines = [
        "# samkit reproduce: The Crucial Role of Normalization in Sharpness-Aware Minimization",
        "",
        "Dai, Ahn & Sra (NeurIPS 2023). Every prediction below is computed by `samkit.dynamics.theory` "
        "(or is an expected behaviour checked against the data) and every measurement comes from a run "
        "of this report; nothing is typed in by hand.",
        "",
        f"**{passed} of {total} claims PASS.**",
        "",
        "## Claims",
        "",
        "| id | claim | setting | prediction | measured | tolerance | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for c in r["claims"]:
            verdict = "**PASS**" if c["passed"] else "**FAIL**"
            lines.append(
                "| "
                + " | ".join(
                    _md_cell(x)
                    for x in (c["id"], c["statement"], c["setting"], c["prediction"], c["measured"], c["tolerance"])
                )
                + f" | {verdict} |"
            )
    for r in results:
        name = r["experiment"]
        lines += ["", f"## {name}: {r['title']}", "", r["summary"], ""]
        run = r.get("run", {})
        lines.append(
            f"Preset `{r['preset']}`"
            + (f", overrides `{' '.join(r['overrides'])}`" if r.get("overrides") else "")
            + f", config hash `{r['config_hash']}`"
            + (f", {run.get('units', '?')} work units ({run.get('units_cached', 0)} from cache)" if run else "")
            + (f", {run['seconds']:.1f} s." if run.get("seconds") is not None else ".")
        )
        for f in r["figures"]:
            lines += ["", f"### {f['title']}", "", f"![{f['title']}]({name}/figures/{f['file']})", ""]
            cap = f["caption"]
            if f.get("claims"):
                cap += " Supports claim(s) " + ", ".join(f["claims"]) + "."
            lines.append(cap)
            links = [f"[{Path(d).name}]({name}/{d})" for d in f.get("data", [])]
            links.append(f"[result.json]({name}/result.json)")
            lines += ["", "Data: " + ", ".join(links)]
    if results:
        p = results[0]["provenance"]
        lines += [
            "",
            "## Provenance",
            "",
            f"samkit {p['samkit']}, torch {p['torch']}, numpy {p['numpy']}, Python {p['python']}, "
            f"git commit `{p.get('git_commit') or 'unavailable'}`, {p['platform']}. "
            "Each experiment's `result.json` and each cached unit file carries its own provenance, seed and config.",
        ]
    return "\n".join(lines) + "\n"


_CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;font-size:0.9em}td,th{border:1px solid #ccc;padding:4px 6px;vertical-align:top}
th{background:#f3f3f3}.PASS{background:#d9f2d9;font-weight:bold}.FAIL{background:#f7d4d4;font-weight:bold}
figure{margin:1.5em 0}img{max-width:100%;border:1px solid #eee}figcaption{font-size:0.95em;max-width:900px}
code{background:#f5f5f5;padding:0 3px}
"""


def _html(results: Sequence[Mapping[str, Any]]) -> str:
    e = html.escape
    passed, total = summary(results)
    out = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        "<title>samkit reproduce: normalization in SAM</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>samkit reproduce: The Crucial Role of Normalization in Sharpness-Aware Minimization</h1>",
        "<p>Dai, Ahn &amp; Sra (NeurIPS 2023). Every prediction is computed by <code>samkit.dynamics.theory</code> "
        "(or is an expected behaviour checked against the data) and every measurement comes from a run of this "
        "report; nothing is typed in by hand.</p>",
        f"<p><b>{passed} of {total} claims PASS.</b> Machine-readable: <a href='claims.json'>claims.json</a>.</p>",
        "<h2>Claims</h2><table><tr><th>id</th><th>claim</th><th>setting</th><th>prediction</th>"
        "<th>measured</th><th>tolerance</th><th>verdict</th></tr>",
    ]
    for r in results:
        for c in r["claims"]:
            v = "PASS" if c["passed"] else "FAIL"
            fig = f" <a href='#{e(r['experiment'])}'>fig</a>" if c.get("figure") else ""
            out.append(
                "<tr>"
                + "".join(
                    f"<td>{e(str(x))}</td>"
                    for x in (c["id"], c["statement"], c["setting"], c["prediction"], c["measured"], c["tolerance"])
                )
                + f"<td class='{v}'>{v}{fig}</td></tr>"
            )
    out.append("</table>")
    for r in results:
        name = r["experiment"]
        run = r.get("run", {})
        out.append(f"<h2 id='{e(name)}'>{e(name)}: {e(r['title'])}</h2><p>{e(r['summary'])}</p>")
        info = f"Preset <code>{e(r['preset'])}</code>"
        if r.get("overrides"):
            info += f", overrides <code>{e(' '.join(r['overrides']))}</code>"
        info += f", config hash <code>{e(r['config_hash'])}</code>"
        if run:
            info += f", {e(str(run.get('units', '?')))} work units ({e(str(run.get('units_cached', 0)))} from cache)"
            if run.get("seconds") is not None:
                info += f", {run['seconds']:.1f} s"
        out.append(f"<p>{info}.</p>")
        for f in r["figures"]:
            src = f"./{name}/figures/{f['file']}"  # "./": a crafted name cannot become a javascript: URL
            cap = e(f["caption"])
            if f.get("claims"):
                cap += " Supports claim(s) " + e(", ".join(f["claims"])) + "."
            links = [f"<a href='{e('./' + name + '/' + d)}'>{e(Path(d).name)}</a>" for d in f.get("data", [])]
            links.append(f"<a href='./{e(name)}/result.json'>result.json</a>")
            out.append(
                f"<figure><h3>{e(f['title'])}</h3><a href='{e(src)}'><img src='{e(src)}' alt='{e(f['title'])}'></a>"
                f"<figcaption>{cap}<br>Data: {', '.join(links)}</figcaption></figure>"
            )
    if results:
        p = results[0]["provenance"]
        out.append(
            "<h2>Provenance</h2><p>"
            + e(
                f"samkit {p['samkit']}, torch {p['torch']}, numpy {p['numpy']}, Python {p['python']}, "
                f"git commit {p.get('git_commit') or 'unavailable'}, {p['platform']}."
            )
            + " Each experiment's result.json and each cached unit file carries its own provenance, seed and config."
            "</p>"
        )
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def write_report(out: Path, results: Sequence[Mapping[str, Any]] | None = None) -> list[Path]:
    """Write ``index.html``, ``README.md`` and ``claims.json`` into ``out``; return their paths.

    ``results`` defaults to :func:`collect_results` of ``out``.
    """
    out = Path(out)
    if results is None:
        results = collect_results(out)
    claims = [c for r in results for c in r["claims"]]
    passed, total = summary(results)
    paths = [out / "index.html", out / "README.md", out / "claims.json"]
    atomic_write_text(paths[0], _html(results))
    atomic_write_text(paths[1], _markdown(results))
    write_json(
        paths[2],
        {
            "passed": passed,
            "total": total,
            "all_pass": passed == total,
            "experiments": [
                {"experiment": r["experiment"], "preset": r["preset"], "config_hash": r["config_hash"]} for r in results
            ],
            "claims": claims,
        },
    )
    json.dumps(claims)  # fail loudly here rather than write an unreadable file
    return paths
