"""The report (issue 14): summary first, problems never silent, each setting once, links that resolve.

The experiments are the toys of ``tests/helpers/report_toys.py`` run through the real CLI (one process).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from report_toys import OTHER_SETTING, SETTING, check_links, registered

from samkit.cli import main
from samkit.report import collect, write_report

RUN = ["--preset", "tiny", "--no-progress", "--jobs", "1"]


@pytest.fixture(autouse=True)
def _toys():
    with registered():
        yield


def _run(out: Path, exp: str, *sets: str) -> int:
    return main(["run", exp, "--out", str(out), *RUN, *[a for s in sets for a in ("--set", s)]])


def test_summary_first_then_problems_fails_and_not_exercised_one_line_each(tmp_path, capsys):
    assert _run(tmp_path, "JUDGED", "fail=true", "exercised=false") == 1
    assert _run(tmp_path, "ABSENT") == 3
    page = (tmp_path / "index.html").read_text()
    assert page.index("id='summary'") < page.index("id='contents'") < page.index("id='JUDGED'")
    start = page.index("class='attention'")
    attention = page[start : page.index("</ul>", start)]
    order = [attention.index(s) for s in ("ABSENT: the moon is not in", "J.2: the toy passes", "J.3: a claim whose")]
    assert order == sorted(order) and attention.count("<li") == 3
    assert "href='#ABSENT'" in attention and "href='#JUDGED-J.2'" in attention and "href='#JUDGED-J.3'" in attention
    assert "<b>1 of 3 claims PASS.</b> (1 NOT EXERCISED" in page and "1 experiment did not run" in page
    assert "did not run:</b> the moon is not in /nonexistent/moon (set MOON_DIR)." in page
    assert "Judged &lt;toy&gt;" in page and "<toy>" not in page  # escaped
    claims = json.loads((tmp_path / "claims.json").read_text())
    assert (
        claims["verdicts"] == {"FAIL": 1, "INCONCLUSIVE": 0, "NOT EXERCISED": 1, "PASS": 1} and not claims["all_pass"]
    )
    assert [(p["experiment"], p["kind"]) for p in claims["not_run"]] == [("ABSENT", "missing")]
    md = (tmp_path / "README.md").read_text()
    lines = [line for line in md[md.index("Needs attention") :].splitlines() if line.startswith("- **")]
    assert [line.split("**")[1] for line in lines] == ["did not run", "FAIL", "NOT EXERCISED"]
    assert check_links(tmp_path, page) > 10


def test_each_setting_is_stated_once(tmp_path):
    assert _run(tmp_path, "JUDGED") == 0
    page = (tmp_path / "index.html").read_text()
    md = (tmp_path / "README.md").read_text()
    assert page.count(SETTING) == 1 and page.count(OTHER_SETTING) == 1
    assert md.count(SETTING) == 1 and md.count(OTHER_SETTING.replace("|", "\\|")) == 1
    assert "class='setting'" in page  # two settings: one header row each inside the one claims table
    assert page.count("<table class='claims'>") == 1


def test_figures_sit_beside_their_claims_with_encoded_links(tmp_path):
    assert _run(tmp_path, "JUDGED") == 0
    page = (tmp_path / "index.html").read_text()
    section = page[page.index("id='JUDGED'") :]
    assert section.index("<table class='claims'>") < section.index("<figure")  # same grid: table, then figures
    assert "<div class='grid'>" in section
    assert "src='./JUDGED/figures/a%20b%231.png'" in section
    assert "href='#JUDGED-fig-1'" in section  # J.3's id links to its figure
    check_links(tmp_path, page)
    moved = tmp_path.parent / (tmp_path.name + "-moved")
    shutil.copytree(tmp_path, moved)
    check_links(moved, (moved / "index.html").read_text())  # relative: still resolves after a move


def test_a_damaged_table_shows_damaged_not_its_stale_verdicts(tmp_path, capsys):
    assert _run(tmp_path, "JUDGED") == 0
    csv = tmp_path / "JUDGED" / "data" / "squares.csv"
    good = csv.read_text()
    csv.write_text(good.splitlines()[0] + "\n")  # truncated to its header
    write_report(tmp_path)  # what `samkit run OTHER` would rewrite: it checks every folder
    page = (tmp_path / "index.html").read_text()
    assert "<b>damaged:</b>" in page and "squares.csv" in page and "id='JUDGED-J.1'" not in page
    assert json.loads((tmp_path / "claims.json").read_text())["claims"] == []
    capsys.readouterr()
    assert main(["report", str(tmp_path)]) == 3
    err = capsys.readouterr().err
    assert err.startswith("samkit: error: ") and "squares.csv' is damaged" in err and err.count("\n") == 1
    csv.write_text(good)
    assert main(["report", str(tmp_path)]) == 0
    assert "id='JUDGED-J.1'" in (tmp_path / "index.html").read_text()


def test_an_out_of_date_result_is_not_shown_and_report_recomputes_it(tmp_path, capsys):
    assert _run(tmp_path, "JUDGED") == 0
    rpath = tmp_path / "JUDGED" / "result.json"
    r = json.loads(rpath.read_text())
    r["config_hash"] = "from-another-config"
    rpath.write_text(json.dumps(r))
    results, problems = collect(tmp_path)
    assert results == [] and "is out of date" in problems[0].reason
    assert main(["report", str(tmp_path)]) == 0
    assert collect(tmp_path)[1] == []


def test_a_failed_rerun_keeps_the_previous_results_marked(tmp_path, capsys):
    assert _run(tmp_path, "JUDGED") == 0
    assert _run(tmp_path, "JUDGED", "boom=2") == 3  # unit x=2 raises: config and data stay the previous run's
    page = (tmp_path / "index.html").read_text()
    assert "did not finish:</b> 1 unit failed" in page and "previous complete run" in page
    assert "id='JUDGED-J.1'" in page  # the previous results, consistent with the previous config
    claims = json.loads((tmp_path / "claims.json").read_text())
    assert claims["not_run"][0]["previous"] and not claims["all_pass"]


def test_report_refuses_an_experiment_this_samkit_does_not_know(tmp_path, capsys):
    assert _run(tmp_path, "JUDGED") == 0
    from samkit.experiments import _REGISTRY

    _REGISTRY.pop("JUDGED")
    capsys.readouterr()
    # its config cannot be re-derived from (preset, overrides), so its verdicts cannot be trusted: the folder is
    # refused (exit 3) with one line naming the file, and the report says why instead of showing them
    assert main(["report", str(tmp_path)]) == 3
    err = capsys.readouterr().err
    assert "samkit: warning: JUDGED not redrawn" in err and "which this samkit does not know" in err
    page = (tmp_path / "index.html").read_text()
    assert "id='JUDGED-J.1'" not in page and "does not know" in page


def test_report_of_a_folder_where_nothing_ran(tmp_path, capsys):
    assert _run(tmp_path, "ABSENT") == 3
    (tmp_path / "index.html").unlink()
    assert main(["report", str(tmp_path)]) == 3  # before: "holds no experiment results"
    page = (tmp_path / "index.html").read_text()
    assert "did not run:</b> the moon" in page and "Needs what is not there" in page


def test_a_folder_holding_another_experiments_files_is_damaged(tmp_path):
    assert _run(tmp_path, "JUDGED") == 0
    shutil.copytree(tmp_path / "JUDGED", tmp_path / "ABSENT")
    results, problems = collect(tmp_path)
    assert [r["experiment"] for r in results] == ["JUDGED"]
    assert problems[0].experiment == "ABSENT" and "is the config of experiment 'JUDGED'" in problems[0].reason


def test_the_summary_says_what_the_network_claims_were_judged_on_and_states_findings(tmp_path):
    assert _run(tmp_path, "JUDGED", "fail=true") == 1
    page = (tmp_path / "index.html").read_text()
    summary = page[page.index("id='summary'") : page.index("id='contents'")]
    assert "judged on these architectures and data only (in this run)" in summary
    # the scope's own claims' verdicts (J.1 PASS, J.2 FAIL), not the experiment's (J.3 is not in the scope)
    assert "<b>toy &lt;net&gt;</b> <span class='n c-FAIL'>1 PASS, 1 FAIL</span>: 3 numbers squared" in summary
    assert "Findings:" in summary and "the toy was told to fail; its largest square is 9" in summary
    md = (tmp_path / "README.md").read_text()
    assert "- **JUDGED toy &lt;net>** (1 PASS, 1 FAIL): 3 numbers squared" in md
    assert "- **JUDGED** the toy was told to fail; its largest square is 9" in md
    assert md.index("judged on these architectures") < md.index("Needs attention")
    (exp,) = json.loads((tmp_path / "claims.json").read_text())["experiments"]
    assert exp["scope"] == [
        {
            "label": "toy <net>",
            "what": "3 numbers squared",
            "claims": ["J.1", "J.2"],
            "verdicts": {"FAIL": 1, "INCONCLUSIVE": 0, "NOT EXERCISED": 0, "PASS": 1},
        }
    ]
    assert exp["findings"] == ["the toy was told to fail; its largest square is 9"]
    # scope and findings are recomputed from the verified config and tables: an edit does not survive a report
    result = tmp_path / "JUDGED" / "result.json"
    edited = json.loads(result.read_text())
    edited["scope"][0]["what"] = "ResNet-50 on ImageNet"
    edited["findings"] = []
    result.write_text(json.dumps(edited))
    assert main(["report", str(tmp_path)]) == 1
    md = (tmp_path / "README.md").read_text()
    assert "ImageNet" not in md and "its largest square is 9" in md


def test_no_scope_line_when_every_claim_is_about_formulas(tmp_path):
    assert _run(tmp_path, "JUDGED") == 0
    page = (tmp_path / "index.html").read_text()
    assert "<span class='n c-PASS'>2 PASS</span>" in page and "Findings:" not in page
