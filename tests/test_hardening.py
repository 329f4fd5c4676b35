"""Bad inputs and faults a new user meets (issue 14): each case that was wrong before, as a test.

Each test names the case, what happened before and what must happen now.
"""

from __future__ import annotations

import importlib
import io
import json
import os

import pytest
import torch

import samkit._progress as progress_mod
from samkit._progress import Progress
from samkit.cli import main
from samkit.experiments import register
from samkit.experiments.executors import Task
from samkit.experiments.runner import folder_lock

SMALL = [
    "--dataset",
    "synthetic",
    "--model",
    "mlp",
    "--batch-size",
    "32",
    "--synthetic-train",
    "64",
    "--synthetic-test",
    "32",
    "--image-size",
    "8",
    "--no-progress",
    "--threads",
    "1",
    "--epochs",
    "1",
    "--quiet",
]


@pytest.fixture
def squares():
    cls = importlib.import_module("fault_experiments").Squares
    register(cls)
    return cls


def _one_line(capsys, prefix: str) -> str:
    err = capsys.readouterr().err
    assert err.startswith(prefix) and err.count("\n") == 1 and "Traceback" not in err, err
    return err


# ------------------------------------------------------------------------------------------------ output folders
@pytest.mark.parametrize(
    "argv",
    [
        ["run", "SQUARES", "--preset", "tiny", "--out", ""],
        ["report", ""],
        ["sweep", "--out", "", "--dataset", "synthetic", "--rho", "0.1,0.2"],
        ["train", *SMALL, "--out", " "],
    ],
)
def test_an_empty_out_is_refused(argv, tmp_path, monkeypatch, capsys, squares):
    """Before: `--out ""` wrote the results (run, sweep) into the current folder, or trained and wrote nothing."""
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    prefix = "samkit train: error: " if argv[0] == "train" else "samkit: error: "
    assert "must not be empty" in _one_line(capsys, prefix)
    assert list(tmp_path.iterdir()) == []


def test_train_out_that_is_a_file(tmp_path, capsys):
    """Before: a FileExistsError traceback (exit 1)."""
    (tmp_path / "f").write_text("x")
    assert main(["train", *SMALL, "--out", str(tmp_path / "f")]) == 2
    assert "cannot write to output directory" in _one_line(capsys, "samkit train: error: ")


def test_a_second_train_on_the_same_out_is_refused(tmp_path, capsys):
    """Before: two `samkit train` on one --out both trained and overwrote each other's files (both exit 0)."""
    out = tmp_path / "run"
    with folder_lock(out):  # what a running `samkit train` holds
        assert main(["train", *SMALL, "--out", str(out)]) == 2
        assert "is in use by samkit pid" in _one_line(capsys, "samkit train: error: ")
    assert not (out / "checkpoint.pt").exists()
    assert main(["train", *SMALL, "--out", str(out)]) == 0  # released when its holder ends


def test_a_second_sweep_on_the_same_out_is_refused(tmp_path, capsys):
    with folder_lock(tmp_path):
        argv = ["sweep", "--out", str(tmp_path), "--dataset", "synthetic", "--rho", "0.1,0.2", "--no-progress"]
        assert main(argv) == 2
    assert "is in use" in _one_line(capsys, "samkit: error: ")
    assert not (tmp_path / "runs").exists()


def test_a_file_that_cannot_be_written_mid_run_is_one_line(tmp_path, capsys, squares):
    """Before: `OUT/EXP/data` being a file gave a FileExistsError traceback (exit 1). Now the new outputs are
    written into `EXP/.commit/` and switched in; a file in the way there is the same kind of mid-run failure."""
    argv = ["run", "SQUARES", "--preset", "tiny", "--out", str(tmp_path), "--jobs", "1", "--no-progress"]
    assert main(argv) == 0
    capsys.readouterr()
    (tmp_path / "SQUARES" / ".commit").write_text("in the way")
    assert main([*argv, "--set", "bound=50"]) == 3
    err = capsys.readouterr().err
    assert err.startswith("samkit: error: ") and "SQUARES/.commit'" in err and "Traceback" not in err
    assert "bound=50" not in (tmp_path / "SQUARES" / "config.json").read_text()  # the previous results stand


def test_a_value_error_from_deeper_code_is_one_line_and_traceback_on_request(tmp_path, capsys, monkeypatch):
    """Any ValueError (here from inside `train`) is a one-line usage error; SAMKIT_TRACEBACK=1 shows the traceback."""
    import samkit.cli

    def broken(cfg, resume=False):
        raise ValueError("a value deep inside\nsecond line")

    monkeypatch.setattr(samkit.cli, "train", broken)
    assert main(["train", *SMALL, "--out", str(tmp_path / "r")]) == 2
    assert _one_line(capsys, "samkit train: error: ") == "samkit train: error: a value deep inside\n"
    monkeypatch.setenv("SAMKIT_TRACEBACK", "1")  # the traceback, and the same exit code (it used to turn into 1)
    assert main(["train", *SMALL, "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "ValueError: a value deep inside" in err
    assert err.rstrip().endswith("samkit train: error: a value deep inside")


def test_resume_from_a_checkpoint_that_does_not_fit_the_model(tmp_path, capsys):
    """Before: a RuntimeError traceback from `load_state_dict` (size mismatch)."""
    out = tmp_path / "run"
    assert main(["train", *SMALL, "--out", str(out)]) == 0
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    first = next(iter(ckpt["model"]))
    ckpt["model"][first] = torch.zeros(3, 3)
    ckpt["status"] = "running"
    torch.save(ckpt, out / "checkpoint.pt")
    assert main(["train", *SMALL, "--out", str(out), "--resume"]) == 2
    err = _one_line(capsys, "samkit train: error: ")
    assert "checkpoint.pt does not fit this run's model or optimizer" in err and "size mismatch" in err


def test_resume_with_a_checkpoint_of_another_optimizer_state(tmp_path, capsys):
    """An optimizer state of the wrong rule (edited checkpoint) is refused by SAM.load_state_dict, in one line."""
    out = tmp_path / "run"
    assert main(["train", *SMALL, "--optimizer", "sam", "--out", str(out)]) == 0
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    ckpt["optimizer"]["samkit"]["normalization"] = "none"
    ckpt["status"] = "running"
    torch.save(ckpt, out / "checkpoint.pt")
    assert main(["train", *SMALL, "--optimizer", "sam", "--out", str(out), "--resume"]) == 2
    assert "normalization='none'" in _one_line(capsys, "samkit train: error: ")


# ------------------------------------------------------------------------------------------------ progress
def test_progress_outside_a_terminal_is_plain_lines(tmp_path, capsys, squares):
    """Before: tqdm wrote carriage-return frames into logs, and its postfix named the unit that had just finished."""
    argv = ["run", "SQUARES", "--preset", "tiny", "--out", str(tmp_path), "--jobs", "1"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = [line for line in err.splitlines() if "units done" in line]
    assert lines[0].startswith("SQUARES: 1/4 units done") and "running: SQUARES x2 (" in lines[0]
    assert lines[-1].startswith("SQUARES: 4/4 units done") and "running" not in lines[-1]


def test_a_long_unit_shows_a_heartbeat_naming_it(tmp_path, capsys, monkeypatch, squares):
    monkeypatch.setattr(progress_mod, "HEARTBEAT_S", 0.2)
    monkeypatch.setattr(progress_mod, "_TICK_S", 0.05)
    argv = [
        "run",
        "SQUARES",
        "--preset",
        "tiny",
        "--out",
        str(tmp_path),
        "--jobs",
        "1",
        "--set",
        "xs=3",
        "--set",
        "sleep=1.0",
    ]
    assert main(argv) == 0
    beats = [line for line in capsys.readouterr().err.splitlines() if line.startswith("SQUARES: 0/1 units done")]
    assert beats and all("running: SQUARES x3 (" in b for b in beats)


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_the_bar_names_the_running_units():
    tasks = [Task("E9", k, {}, print) for k in ("a", "b", "c")]
    out = _Tty()
    bar = Progress(tasks, "E9", slots=2, stream=out)
    bar.done(tasks[0])
    bar.close()
    text = out.getvalue()
    assert "\r" in text and "running: E9 b (" in text and "E9 c (" in text and "1/3" in text


def test_ray_like_executors_count_the_units_out():
    tasks = [Task("E9", k, {}, print) for k in ("a", "b")]
    log = io.StringIO()
    bar = Progress(tasks, "E9", slots=None, stream=log)
    bar.done(tasks[1])
    bar.close()
    assert log.getvalue().startswith("E9: 1/2 units done") and "1 units out" in log.getvalue()


# ------------------------------------------------------------------------------------------------ results folders
def test_report_keeps_the_other_experiments_when_one_is_old(tmp_path, capsys, squares):
    """Before: one old or unknown experiment folder made `samkit report` exit 2 without writing any report."""
    args = ["--preset", "tiny", "--out", str(tmp_path), "--jobs", "1", "--no-progress"]
    assert main(["run", "SQUARES", *args]) == 0
    old = tmp_path / "E4"
    old.mkdir()
    (old / "config.json").write_text(json.dumps({"experiment": "E4", "preset": "quick", "config": {}}))
    capsys.readouterr()
    assert main(["report", str(tmp_path)]) == 3
    err = capsys.readouterr().err
    assert err.startswith("samkit: error: ") and "not a complete samkit config" in err and err.count("\n") == 1
    page = (tmp_path / "index.html").read_text()
    assert "id='SQUARES-SQ.1'" in page and "<b>damaged:</b>" in page


def test_the_umask_of_a_train_run(tmp_path):
    """Before: checkpoint.pt, metrics.csv, summary.json were 0600 whatever the umask."""
    old = os.umask(0o022)
    try:
        assert main(["train", *SMALL, "--out", str(tmp_path / "r")]) == 0
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "r").iterdir() if p.is_file()}
    assert modes and set(modes.values()) == {0o644}, modes
