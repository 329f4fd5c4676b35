"""Hardening, round three (issue 24): a shared results folder must not be able to attack its reader, a failed run
must leave the previous results as they were, workers die with their driver, and exit codes mean what they say.

Each test is one row of the issue: the input, what happened before, what must happen now. (The report's rows are in
tests/test_report_hardening3.py, train's and sweep's in tests/train/test_hardening3.py and
tests/test_sweep_hardening3.py.)
"""

from __future__ import annotations

import errno
import importlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import samkit._io
import samkit.experiments.provenance as provenance
import samkit.experiments.runner as runner
import samkit.experiments.store as store
from samkit._io import MARKER, atomic_write_text
from samkit.cli import main
from samkit.experiments import register
from samkit.report import collect

HELPERS = Path(__file__).parent / "helpers"


@pytest.fixture
def squares():
    cls = importlib.import_module("fault_experiments").Squares
    register(cls)
    return cls


def _run(out, *extra):
    return main(["run", "SQUARES", "--preset", "tiny", "--out", str(out), "--jobs", "1", "--no-progress", *extra])


def _err(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return err


# -- links and foreign files ----------------------------------------------------------------------------------------
def test_a_lock_symlink_does_not_overwrite_the_file_it_points_to(squares, tmp_path, capsys):
    """Before: `ln -s ~/notes.txt R/E/.lock` made samkit truncate notes.txt and write its pid there."""
    out, notes = tmp_path / "R", tmp_path / "notes.txt"
    assert _run(out) == 0
    notes.write_text("my notes\n")
    (out / "SQUARES" / ".lock").unlink()
    (out / "SQUARES" / ".lock").symlink_to(notes)
    capsys.readouterr()
    assert _run(out, "--set", "bound=50") == 2
    assert ".lock" in _err(capsys) and notes.read_text() == "my notes\n"


def test_a_lock_link_is_refused_by_the_lock_itself(tmp_path):
    # the folder check runs first in `samkit run`; the lock refuses a link on its own too (train and sweep use it)
    target = tmp_path / "target.txt"
    target.write_text("keep")
    (tmp_path / "E").mkdir()
    (tmp_path / "E" / ".lock").symlink_to(target)
    with pytest.raises(ValueError, match="symbolic link"), runner.folder_lock(tmp_path / "E"):
        pass
    assert target.read_text() == "keep"


@pytest.mark.parametrize("linked", ["SQUARES/data", "SQUARES", "SQUARES/units"])
def test_a_linked_folder_inside_the_results_is_refused_and_nothing_outside_is_touched(
    squares, tmp_path, capsys, linked
):
    """Before: a symlinked `E4/data` made the stale-CSV cleanup delete `thesis.csv` in the link's target."""
    out, elsewhere = tmp_path / "R", tmp_path / "elsewhere"
    assert _run(out) == 0
    elsewhere.mkdir()
    (elsewhere / "thesis.csv").write_text("chapter 1\n")
    moved = out / linked
    os.replace(moved, tmp_path / "moved")
    moved.symlink_to(elsewhere)
    capsys.readouterr()
    assert _run(out, "--set", "bound=50") == 2
    assert "symbolic link" in _err(capsys)
    assert sorted(p.name for p in elsewhere.iterdir()) == ["thesis.csv"]
    assert (elsewhere / "thesis.csv").read_text() == "chapter 1\n"


def test_out_dot_in_a_project_is_refused_and_the_users_files_stay(squares, tmp_path, capsys, monkeypatch):
    """Before: `--out .` overwrote the user's README.md and index.html (and the CLI's hint suggested `.`)."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "README.md").write_text("# my project\n")
    (project / "src").mkdir()
    monkeypatch.chdir(project)
    assert _run(".") == 2
    err = _err(capsys)
    assert "holds files samkit did not write" in err and "'README.md'" in err
    assert (project / "README.md").read_text() == "# my project\n" and not (project / "SQUARES").exists()
    assert main(["report", "."]) == 2  # the report would write README.md there too
    assert (project / "README.md").read_text() == "# my project\n"


def test_an_empty_or_samkit_folder_is_accepted_and_marked(squares, tmp_path):
    assert _run(tmp_path / "new") == 0 and (tmp_path / "new" / MARKER).is_file()
    assert _run(tmp_path / "new", "--set", "bound=50") == 0  # samkit's own folder: a rerun writes again
    # a results folder written by a samkit from before the marker: every entry is samkit's, so it is accepted
    (tmp_path / "new" / MARKER).unlink()
    assert _run(tmp_path / "new") == 0 and (tmp_path / "new" / MARKER).is_file()


def test_the_usage_hint_no_longer_suggests_the_current_folder(capsys):
    assert main(["run", "E4", "--out", ""]) == 2
    err = capsys.readouterr().err
    assert "write . for" not in err and "new folder" in err


# -- a failed run leaves the previous results --------------------------------------------------------------------------
def test_a_failed_write_leaves_the_previous_results_readable_and_judged_as_before(
    squares, tmp_path, capsys, monkeypatch
):
    """Before: with `ulimit -f 150` a rerun with other settings failed (exit 3) after replacing a CSV; the report then
    called the experiment damaged."""
    out = tmp_path / "R"
    assert _run(out) == 0
    before = {p.relative_to(out): p.read_bytes() for p in (out / "SQUARES").rglob("*") if p.is_file()}
    before = {k: v for k, v in before.items() if k.parts[1] != "units"}
    real = runner.atomic_write_text

    def full_disk(path, text):
        if Path(path).name == "config.json":  # the tables of the new run are written, then the disk is full

            def write(tmp):
                raise OSError(errno.ENOSPC, "No space left on device")

            samkit._io.atomic_write(path, write)
        real(path, text)

    monkeypatch.setattr(runner, "atomic_write_text", full_disk)
    monkeypatch.setattr(runner, "write_json", lambda p, o: full_disk(p, json.dumps(o)))
    capsys.readouterr()
    assert _run(out, "--set", "bound=50") == 3
    err = _err(capsys)
    assert "No space left on device" in err and "config.json" in err  # the error names the file
    after = {p.relative_to(out): p.read_bytes() for p in (out / "SQUARES").rglob("*") if p.is_file()}
    assert {k: v for k, v in after.items() if k.parts[1] in ("data", "figures") or len(k.parts) == 2} == {
        k: v for k, v in before.items()
    }
    results, problems = collect(out)
    assert problems == [] and [c["verdict"] for c in results[0]["claims"]] == ["PASS"]


def test_a_disk_full_error_names_the_file(tmp_path):
    """Before: a disk-full error named no file."""

    def write(tmp):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError) as info:
        samkit._io.atomic_write(tmp_path / "x.csv", write)
    assert info.value.filename == str(tmp_path / "x.csv") and not list(tmp_path.iterdir())


# -- workers die with their driver ----------------------------------------------------------------------------------
DRIVER = """
import importlib, sys
sys.path.insert(0, {helpers!r})
if __name__ == "__main__":
    from samkit.experiments import register
    register(importlib.import_module("fault_experiments").Squares)
    from samkit.cli import main
    sys.exit(main(["run", "SQUARES", "--preset", "tiny", "--jobs", "2", "--out", {out!r}, "--set", "sleep=120",
                   "--no-progress"]))
"""


def test_killing_the_driver_ends_its_workers(tmp_path):
    """Before: after `kill -9` of `samkit run E4 --jobs 2` the workers were alive 7 minutes later."""
    meet = tmp_path / "meet"
    meet.mkdir()
    script = tmp_path / "driver.py"
    script.write_text(DRIVER.format(helpers=str(HELPERS), out=str(tmp_path / "R")))
    env = {**os.environ, "SAMKIT_TEST_RENDEZVOUS": str(meet)}
    driver = subprocess.Popen([sys.executable, str(script)], env=env, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while len(os.listdir(meet)) < 2 and time.time() < deadline:
            time.sleep(0.1)
        workers = [int(p) for p in os.listdir(meet)]
        assert len(workers) == 2, "the workers did not start"
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    deadline = time.time() + 20
    alive = workers
    while alive and time.time() < deadline:
        time.sleep(0.2)
        alive = [p for p in workers if _alive(p)]
    for p in alive:  # do not leave them behind if the test fails
        os.kill(p, signal.SIGKILL)
    assert alive == [], "workers outlived their driver"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as fh:  # a zombie (exited, not yet reaped by init) is not running
        return fh.read().split(") ")[1][0] != "Z"


# -- exit codes -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "error, text",
    [
        (RuntimeError("DefaultCPUAllocator: can't allocate memory"), "unexpected RuntimeError: DefaultCPUAllocator"),
        (MemoryError(), "out of memory"),
        (KeyError("x"), "unexpected KeyError"),
    ],
)
def test_an_unexpected_error_is_a_runtime_failure_not_a_claim(squares, tmp_path, capsys, monkeypatch, error, text):
    """Before: torch's allocation error or a MemoryError printed a traceback and exited 1 ("a claim did not pass")."""
    import samkit.cli as cli

    def boom(*a, **k):
        raise error

    monkeypatch.setattr(cli, "run_experiments", boom)
    assert _run(tmp_path / "R") == 3
    err = _err(capsys)
    assert err.startswith("samkit: error: ") and text in err and err.count("\n") == 1
    monkeypatch.setenv("SAMKIT_TRACEBACK", "1")  # before: every 2 and 3 became 1 with the traceback
    assert _run(tmp_path / "R") == 3
    assert "Traceback" in capsys.readouterr().err


def test_an_ascii_locale_prints_escapes_instead_of_crashing(tmp_path):
    """Before: in an ASCII locale `run` crashed after finishing (ρ, λ in the claims)."""
    env = {**os.environ, "PYTHONIOENCODING": "ascii", "LC_ALL": "C", "LANG": "C"}
    r = subprocess.run([sys.executable, "-m", "samkit", "list", "E9"], env=env, capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr.decode()
    assert b"\\u03bb" in r.stdout and b"Traceback" not in r.stderr  # λ, escaped


# -- bad input refused before any work -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "setting, text",
    [
        ("n_rho=٢", "ASCII digits"),  # Arabic-Indic 2: int() and float() read it
        ("blowup=1e-320", "normal float64"),  # subnormal: passed validation, failed at runtime
        ("seed=100000000000000000000000", "64-bit integer"),  # passed validation, failed in the random generator
    ],
)
def test_odd_numbers_are_refused_with_a_clear_error(tmp_path, capsys, setting, text):
    assert main(["run", "E4", "--preset", "tiny", "--out", str(tmp_path / "R"), "--set", setting]) == 2
    assert text in _err(capsys) and not (tmp_path / "R").exists()


def test_a_repeated_set_key_is_warned_about(squares, tmp_path, capsys):
    assert _run(tmp_path / "R", "--set", "bound=50", "--set", "bound=60") == 0
    assert "--set bound given twice ('50', then '60'): using '60'" in capsys.readouterr().err
    assert json.loads((tmp_path / "R" / "SQUARES" / "config.json").read_text())["config"]["bound"] == 60.0


def test_more_jobs_than_cores_is_capped_with_a_warning(squares, tmp_path, capsys, monkeypatch):
    """Before: `--jobs 1000` started as many processes as there were units on 2 cores."""
    import samkit.cli as cli

    seen = {}
    real = cli.make_executor

    def spy(kind, jobs, address):
        seen["jobs"] = jobs
        return real(kind, 1, address)

    monkeypatch.setattr(cli, "make_executor", spy)
    monkeypatch.setattr(cli, "default_jobs", lambda: 2)
    assert (
        main(["run", "SQUARES", "--preset", "tiny", "--out", str(tmp_path / "R"), "--jobs", "1000", "--no-progress"])
        == 0
    )
    assert seen["jobs"] == 2 and "--jobs 1000 is more than the 2 cores here: using 2" in capsys.readouterr().err


def test_a_grid_out_of_memorys_reach_is_refused_before_any_unit(tmp_path, capsys):
    """Before: `n_rho=100000` on the tiny preset allocated 7.5 GB before failing."""
    assert (
        main(["run", "E4", "--preset", "tiny", "--out", str(tmp_path / "R"), "--set", "n_rho=100000", "--no-progress"])
        == 2
    )
    err = _err(capsys)
    assert "100000 values of rhos" in err and "memory out of reach" in err
    assert not list((tmp_path / "R" / "E4").glob("units/*"))


def test_cuda_without_a_gpu_is_refused_before_any_unit(tmp_path, capsys, monkeypatch):
    """Before: `run E7 --device cuda` without a GPU started every unit before failing."""
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert main(["run", "E7", "--preset", "tiny", "--device", "cuda", "--out", str(tmp_path / "R")]) == 2
    assert "no CUDA device" in _err(capsys) and not (tmp_path / "R").exists()


def test_a_path_too_long_for_the_files_inside_is_refused_before_any_unit(squares, tmp_path, capsys):
    """Before: a 4 000-character path failed only after the units ran."""
    deep = tmp_path
    while len(str(deep)) < store._PATH_MAX - 100:
        deep = deep / ("d" * 200)
    assert _run(deep) == 2
    assert "path is too long" in _err(capsys)


# -- provenance -----------------------------------------------------------------------------------------------------
def test_the_git_commit_is_samkits_not_an_enclosing_projects(tmp_path):
    """Before: `git_commit` came from whatever repository enclosed the installed package."""
    here = provenance._git_commit()
    tracked = (
        subprocess.run(
            ["git", "ls-files", "--error-unmatch", provenance.__file__],
            capture_output=True,
            cwd=Path(provenance.__file__).parent,
        ).returncode
        == 0
    )
    assert (here is not None) == tracked
    project = tmp_path / "project"
    (project / "venv" / "samkit").mkdir(parents=True)
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    (project / "a.txt").write_text("x")
    git = ["git", "-c", "user.email=a@b", "-c", "user.name=a"]
    subprocess.run([*git, "add", "a.txt"], cwd=project, check=True)
    subprocess.run([*git, "commit", "-qm", "x"], cwd=project, check=True)
    copy = project / "venv" / "samkit" / "runner.py"
    atomic_write_text(copy, "# an installed copy, not tracked by the project\n")
    assert provenance._git_commit(copy) is None
