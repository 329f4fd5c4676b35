"""`samkit report` on a hostile or damaged results folder: escaped Markdown, one bad file never stops the report,
no link followed, no running experiment judged.

Each test copies a results folder of two toy experiments (JUDGED from ``tests/helpers/report_toys.py`` and OTHER,
the same toy under another name) and breaks it one way. ``_report`` does what ``samkit report DIR`` does:
:func:`samkit.report.rejudge` (redraw every folder that checks out), :func:`collect`, :func:`write_report`.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import os
import re
import shutil
import signal
from pathlib import Path

import pytest
from report_toys import Judged, registered

from samkit import cli, report
from samkit._io import UnsafePathError
from samkit.cli import main
from samkit.experiments import _REGISTRY, register
from samkit.experiments import store as store_module
from samkit.experiments.runner import folder_lock, run_experiment
from samkit.report import collect, write_report

EVIL = "<img src=x onerror=alert(1)>"


class Other(Judged):
    name = "OTHER"
    title = "Another toy"


@contextlib.contextmanager
def _toys():
    with registered():
        register(Other)
        try:
            yield
        finally:
            _REGISTRY.pop("OTHER", None)


@pytest.fixture(autouse=True)
def _registered():
    with _toys():
        yield


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    out = tmp_path_factory.mktemp("template")
    with _toys():
        for exp in (Judged(), Other()):
            run_experiment(exp, "tiny", out, progress=False)
    return out


@pytest.fixture
def folder(template, tmp_path):
    out = tmp_path / "results"
    shutil.copytree(template, out, symlinks=True)
    return out


def _report(out: Path) -> tuple[list, list, list]:
    """What `samkit report DIR` does: redraw what checks out, collect, write."""
    errors, warnings = report.rejudge(out)
    results, problems = collect(out, errors)
    write_report(out, results, problems)
    return results, problems, warnings


def _names(results) -> list[str]:
    return [r["experiment"] for r in results]


def _snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(root.rglob("*")) if p.is_file()}


def _unescaped(text: str, token: str) -> list[int]:
    """Where ``token`` occurs in Markdown ``text`` not escaped by a backslash."""
    found = []
    for m in re.finditer(re.escape(token), text):
        n = 0
        while m.start() - n - 1 >= 0 and text[m.start() - n - 1] == "\\":
            n += 1
        if n % 2 == 0:
            found.append(m.start())
    return found


def _without_code_spans(line: str) -> str:
    """``line`` less its code spans (CommonMark: a run of N backticks up to the next run of exactly N)."""
    out, i = [], 0
    while i < len(line):
        m = re.compile(r"`+").search(line, i)
        if m is None:
            out.append(line[i:])
            break
        out.append(line[i : m.start()])
        close = re.compile(rf"(?<!`){m.group()}(?!`)").search(line, m.end())
        if close is None:
            out.append(m.group())
            i = m.end()
        else:
            i = close.end()
    return "".join(out)


# ------------------------------------------------------------------------------------------------ 1. Markdown
def test_the_markdown_report_escapes_what_a_crafted_result_json_says(folder):
    path = folder / "JUDGED" / "result.json"
    r = json.loads(path.read_text())
    r["title"] = f"T {EVIL} <script>alert(1)</script>"
    r["summary"] = "[x]: javascript:alert(1)\n\n# big <script>alert(2)</script> [a](javascript:alert(3)) ![i](x:y)"
    r["overrides"] = ["a=`b`", f"c=``` {EVIL} ```"]
    r["claims"][0]["statement"] = f"{EVIL} | cell [y](javascript:alert(6)) [x]"
    r["claims"][1]["measured"] = "x\\](javascript:alert(7))"  # a backslash before the escape: still no link
    r["figures"][0]["caption"] = "<script>alert(8)</script>\n\n1. [x][x] &lt;b&gt;"
    r["figures"][0]["title"] = "t](javascript:alert(9)) ["
    r["figures"][0]["data"] = ["data/a)(javascript:alert(10)).csv"]
    path.write_text(json.dumps(r))
    write_report(folder)  # the crafted texts are shown: its config hash matches
    md = (folder / "README.md").read_text()
    assert "| J.1 |" in md  # shown
    outside = "\n".join(_without_code_spans(line) for line in md.splitlines()).lower()
    assert "<img" not in outside and "<script" not in outside and "</script" not in outside
    assert "## JUDGED: T &lt;img src=x onerror=alert(1)> &lt;script>alert(1)&lt;/script>" in md
    for pos in _unescaped(md, "]("):  # every link and image goes to a file of the folder
        assert re.match(r"\]\(\./[^()\s<>&]*\)", md[pos:]), md[pos : pos + 60]
    assert not [line for line in md.splitlines() if re.match(r" {0,3}\[[^\]]*\]:", line)]  # no link definition
    assert [line for line in md.splitlines() if line.startswith("# ")] == [md.splitlines()[0]]
    assert not [line for line in md.splitlines() if re.match(r"\d+[.)] ", line)]
    assert "&amp;lt;b&amp;gt;" in md  # an entity in the text is shown as written
    # the overrides stay inside one code span that no backtick in them can end
    line = next(line for line in md.splitlines() if line.startswith("Preset `tiny`, overrides "))
    span = line[len("Preset `tiny`, overrides ") :]
    fence = re.match(r"`+", span).group()
    assert len(fence) == 4 and span[len(fence) :].index(fence) > 0
    assert span[len(fence) : len(fence) + span[len(fence) :].index(fence)] == f" a=`b` c=``` {EVIL} ``` "
    rows = [row for row in md.splitlines() if row.startswith("| J.1 |")]
    assert len(_unescaped(rows[0], "|")) == 7  # the pipe in the statement does not add a cell
    page = (folder / "index.html").read_text()  # the HTML page was escaped already (Jinja2 autoescape)
    assert "<img src=x" not in page and "<script" not in page and "href='javascript:" not in page


def test_ordinary_text_reads_the_same_in_markdown(folder):
    write_report(folder)
    md = (folder / "README.md").read_text()
    assert "| J.1 | squares are non-negative | min y >= 0 | min y = 1 | none | **PASS** |" in md
    assert "Setting: grid xs=[1.0, 2.0, 3.0] (shared by J.1 and J.2)" in md
    assert "Setting: another setting \\| with a pipe" in md
    assert "Preset `tiny`, config hash `" in md and "Squares three numbers and judges them." in md
    assert "![Squares](./JUDGED/figures/squares.png)" in md and "[squares.csv](./JUDGED/data/squares.csv)" in md
    assert "![A name to encode](./JUDGED/figures/a%20b%231.png)" in md


# ------------------------------------------------------------------------------------------------ 2. one bad file
def test_a_config_json_of_another_layout_is_one_damaged_experiment(folder):
    cfg_path = folder / "JUDGED" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["tables"] = {"squares.csv": ["rows", 3]}  # before: AttributeError, no report at all
    cfg_path.write_text(json.dumps(cfg))
    results, problems, _ = _report(folder)
    assert _names(results) == ["OTHER"]
    (p,) = problems
    assert p.experiment == "JUDGED" and p.kind == "damaged"
    assert str(cfg_path) in p.reason and "records table 'squares.csv' as ['rows', 3]" in p.reason
    md, page = (folder / "README.md").read_text(), (folder / "index.html").read_text()
    assert "did not finish or is damaged: JUDGED." in md and "### OTHER: Another toy" in md
    assert "did not finish or is damaged: JUDGED." in page and "id='OTHER-J.1'" in page


def test_a_config_json_without_a_table_the_code_needs_is_one_damaged_experiment(folder):
    cfg_path = folder / "JUDGED" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["tables"] = {}  # an older layout: finalize() raises KeyError('squares')
    cfg_path.write_text(json.dumps(cfg))
    results, problems = collect(folder)  # before: the stale result.json was shown
    assert _names(results) == ["OTHER"] and "result.json' is out of date" in problems[0].reason
    results, problems, _ = _report(folder)
    assert _names(results) == ["OTHER"] and [p.experiment for p in problems] == ["JUDGED"]
    assert str(cfg_path) in problems[0].reason and "KeyError: 'squares'" in problems[0].reason
    assert "KeyError: &#39;squares&#39;" in (folder / "index.html").read_text()


def test_a_result_json_of_another_shape_is_one_damaged_experiment(folder):
    path = folder / "JUDGED" / "result.json"
    r = json.loads(path.read_text())
    r["figures"][0]["claims"] = 5  # before: TypeError while writing the report
    path.write_text(json.dumps(r))
    results, problems = collect(folder)
    assert _names(results) == ["OTHER"] and "result.json' is not a samkit result" in problems[0].reason
    write_report(folder, results, problems)


@pytest.fixture
def no_unchecked_decoding(monkeypatch):
    """Fail when the JUDGED tables are decoded (by finalize's load_tables) before their checksum matched."""
    real = store_module.read_table

    def read_table(path):
        assert "JUDGED" not in str(path), f"{path} decoded before its checksum was checked"
        return real(path)

    monkeypatch.setattr(store_module, "read_table", read_table)


def test_a_non_utf8_byte_in_a_table_is_damaged_and_nothing_is_decoded_first(folder, no_unchecked_decoding):
    csv = folder / "JUDGED" / "data" / "squares.csv"
    csv.write_bytes(csv.read_bytes().replace(b"key", b"k\xffy"))  # before: UnicodeDecodeError, exit 2, no report
    results, problems, _ = _report(folder)
    assert _names(results) == ["OTHER"] and problems[0].experiment == "JUDGED"
    assert f"{str(csv)!r} is damaged: its sha256 differs" in problems[0].reason


def test_a_non_utf8_table_whose_checksum_was_edited_too_is_damaged(folder, no_unchecked_decoding):
    csv = folder / "JUDGED" / "data" / "squares.csv"
    raw = csv.read_bytes().replace(b"key", b"k\xffy")
    csv.write_bytes(raw)
    cfg_path = folder / "JUDGED" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["tables"]["squares.csv"]["sha256"] = hashlib.sha256(raw).hexdigest()
    cfg_path.write_text(json.dumps(cfg))
    results, problems, _ = _report(folder)
    assert _names(results) == ["OTHER"]
    assert f"{str(csv)!r} is damaged: it is not UTF-8 text (byte 0xff at offset 1)" in problems[0].reason


CLI_USES_REJUDGE = "rejudge" in inspect.getsource(cli._report)


@pytest.mark.skipif(not CLI_USES_REJUDGE, reason="needs cli._report to call samkit.report.rejudge (see the lead)")
def test_samkit_report_names_every_bad_file_and_reports_the_others(folder, capsys):
    csv = folder / "JUDGED" / "data" / "squares.csv"
    csv.write_bytes(csv.read_bytes().replace(b"key", b"k\xffy"))
    capsys.readouterr()
    assert main(["report", str(folder)]) == 3
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("samkit: error: ") and "squares.csv' is damaged" in err[0]
    assert "id='OTHER-J.1'" in (folder / "index.html").read_text()
    csv.write_bytes(csv.read_bytes().replace(b"k\xffy", b"key"))
    cfg_path = folder / "JUDGED" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["tables"] = {}
    cfg_path.write_text(json.dumps(cfg))
    assert main(["report", str(folder)]) == 3
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "config.json' and the tables it records could not be judged" in err[0]
    assert "KeyError" in err[0] and "id='OTHER-J.1'" in (folder / "index.html").read_text()


# ------------------------------------------------------------------------------------------------ 3. links
def test_a_linked_experiment_folder_is_reported_and_not_followed(folder, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.move(folder / "JUDGED", elsewhere / "JUDGED")
    (folder / "JUDGED").symlink_to(elsewhere / "JUDGED", target_is_directory=True)
    (elsewhere / "JUDGED" / "result.json").unlink()  # what a redraw would write (through the link)
    before = _snapshot(elsewhere)
    results, problems, _ = _report(folder)
    assert _snapshot(elsewhere) == before  # nothing written there
    assert _names(results) == ["OTHER"] and problems[0].experiment == "JUDGED"
    assert f"{str(folder / 'JUDGED')!r} is a symbolic link" in problems[0].reason
    assert problems[0].title == Judged.title  # from samkit's registry, not read through the link
    assert "is a symbolic link" in (folder / "index.html").read_text()


def test_a_link_inside_an_experiment_folder_is_reported_and_not_followed(folder, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(folder / "OTHER" / "figures", elsewhere)
    shutil.rmtree(folder / "OTHER" / "figures")
    (folder / "OTHER" / "figures").symlink_to(elsewhere, target_is_directory=True)  # savefig would write there
    before = _snapshot(elsewhere)
    results, problems, _ = _report(folder)
    assert _snapshot(elsewhere) == before
    assert _names(results) == ["JUDGED"] and problems[0].experiment == "OTHER"
    assert f"{str(folder / 'OTHER' / 'figures')!r} is a symbolic link" in problems[0].reason


def test_the_report_is_not_written_through_links_but_the_folder_may_be_one(folder, tmp_path):
    notes = tmp_path / "notes.md"
    notes.write_text("mine\n")
    write_report(folder)
    (folder / "README.md").unlink()
    (folder / "README.md").symlink_to(notes)
    page = (folder / "index.html").read_bytes()
    with pytest.raises(UnsafePathError, match="README.md' is a symbolic link"):
        write_report(folder)
    assert notes.read_text() == "mine\n" and (folder / "README.md").is_symlink()
    assert (folder / "index.html").read_bytes() == page  # refused before anything was written
    (folder / "README.md").unlink()
    alias = tmp_path / "alias"
    alias.symlink_to(folder, target_is_directory=True)  # the folder the user names may be a link
    results, problems, _ = _report(alias)
    assert _names(results) == ["JUDGED", "OTHER"] and problems == []


# ------------------------------------------------------------------------------------------------ 4. locks
def test_a_running_experiment_is_reported_as_running_and_not_judged(folder):
    (folder / "JUDGED" / "result.json").unlink()
    with folder_lock(folder / "JUDGED"):  # what a `samkit run` writing there holds
        results, problems, _ = _report(folder)
        assert not (folder / "JUDGED" / "result.json").exists()  # not redrawn from half-written files
    assert _names(results) == ["OTHER"] and problems[0].experiment == "JUDGED"
    assert problems[0].kind == "running"
    assert f"is running (locked by samkit pid {os.getpid()}" in problems[0].reason
    assert "**running:**" in (folder / "README.md").read_text()
    assert "did not finish, is damaged or is running: JUDGED." in (folder / "index.html").read_text()
    results, problems, _ = _report(folder)  # the run is over: judged again
    assert _names(results) == ["JUDGED", "OTHER"] and problems == []


def test_the_report_never_creates_a_lock_file(folder):
    (folder / "OTHER" / ".lock").unlink()
    results, problems, _ = _report(folder)
    assert _names(results) == ["JUDGED", "OTHER"] and problems == []
    assert not (folder / "OTHER" / ".lock").exists()


class Blocked(BaseException):
    """The report blocked (not an OSError: nothing on the way may catch it as a file error)."""


@contextlib.contextmanager
def _deadline(seconds: int):
    def expired(*_):
        raise Blocked("the report blocked on a FIFO")

    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.mark.parametrize("name", [".lock", "config.json"])
def test_a_fifo_in_an_experiment_folder_is_reported_without_blocking(folder, name):
    (folder / "JUDGED" / name).unlink()
    os.mkfifo(folder / "JUDGED" / name)
    with _deadline(20):
        results, problems, _ = _report(folder)
    assert _names(results) == ["OTHER"] and problems[0].experiment == "JUDGED"
    assert f"{str(folder / 'JUDGED' / name)!r} is not a regular file" in problems[0].reason
