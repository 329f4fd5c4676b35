"""Files samkit writes (``samkit._io``): atomic, and with the mode the umask asks for (issue 14)."""

from __future__ import annotations

import contextlib
import importlib
import os
import stat
from pathlib import Path

import pytest
import torch

from samkit._io import atomic_write, atomic_write_text, write_csv
from samkit.cli import main
from samkit.experiments import register
from samkit.experiments.plotting import new_figure, save_figure
from samkit.train.records import save_checkpoint


@contextlib.contextmanager
def _umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_every_writer_applies_the_umask(tmp_path: Path, mask: int, expected: int):
    with _umask(mask):
        atomic_write_text(tmp_path / "a.txt", "x")
        write_csv(tmp_path / "t.csv", [{"a": 1}])
        fig, _ = new_figure()
        save_figure(fig, tmp_path / "f.png")
        save_checkpoint(tmp_path / "c.pt", {"w": torch.zeros(2)})
    for name in ("a.txt", "t.csv", "f.png", "c.pt"):
        assert _mode(tmp_path / name) == expected, name


def test_a_rewrite_takes_the_current_umask(tmp_path: Path):
    p = tmp_path / "x.json"
    with _umask(0o077):
        atomic_write_text(p, "1")
    assert _mode(p) == 0o600
    with _umask(0o022):
        atomic_write_text(p, "2")
    assert _mode(p) == 0o644 and p.read_text() == "2"


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path):
    p = tmp_path / "x.txt"
    atomic_write_text(p, "old")

    def boom(tmp: str) -> None:
        Path(tmp).write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(p, boom)
    assert p.read_text() == "old"
    assert sorted(q.name for q in tmp_path.iterdir()) == ["x.txt"]


def test_a_run_folder_is_readable_by_others_under_umask_022(tmp_path: Path, capsys):
    register(importlib.import_module("fault_experiments").Squares)
    with _umask(0o022):
        assert main(["run", "SQUARES", "--preset", "tiny", "--out", str(tmp_path), "--no-progress", "--jobs", "1"]) == 0
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) >= 8  # units, data, config, result, lock, report
    assert {p.relative_to(tmp_path).as_posix(): _mode(p) for p in files if _mode(p) != 0o644} == {}
