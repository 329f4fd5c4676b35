"""samkit train, hardening 3: history writes that cost the same every epoch (and still resume bit-identically),
bounds that protect the machine, and a run folder that never overwrites the user's files."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from pathlib import Path

import pytest
import torch

import samkit.train.loop as loop
from samkit._io import MARKER, UnsafePathError
from samkit.cli import main as samkit_main
from samkit.train import TrainConfig, TrainError, train
from samkit.train.records import CSV_FIELDS

SMALL = dict(
    dataset="synthetic",
    model="mlp",
    batch_size=32,
    synthetic_train=96,
    synthetic_test=48,
    image_size=8,
    progress=False,
    quiet=True,
    threads=1,
)
SMALL_ARGS = [
    "--dataset",
    "synthetic",
    "--model",
    "mlp",
    "--batch-size",
    "32",
    "--synthetic-train",
    "96",
    "--synthetic-test",
    "48",
    "--image-size",
    "8",
    "--no-progress",
    "--threads",
    "1",
]


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _without_seconds(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def _one_line_error(capsys, argv: list[str]) -> str:
    code = samkit_main(["train", *argv])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("samkit train: error: ") and err.count("\n") == 1, err
    return err


# -- 1. the history is appended, not rewritten ---------------------------------------------------------------------


def _written_bytes() -> int:
    with open("/proc/self/io") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("wchar:"))


@pytest.mark.skipif(not os.path.exists("/proc/self/io"), reason="counts the bytes written through /proc/self/io")
def test_every_epoch_writes_the_same_number_of_bytes(tmp_path, monkeypatch):
    """Before: each epoch rewrote (and fsynced) metrics.csv, summary.json with the whole history, and a checkpoint
    holding every row twice, so an epoch's writes grew with the epoch number (26 -> 13 epochs/s within 90 s)."""
    marks: list[int] = []
    run_epoch = loop._run_epoch

    def counted(run, epoch):
        marks.append(_written_bytes())  # what the process wrote so far, at the start of each epoch
        return run_epoch(run, epoch)

    monkeypatch.setattr(loop, "_run_epoch", counted)
    cfg = TrainConfig(
        **dict(
            SMALL,
            optimizer="sgd",
            synthetic_train=32,
            synthetic_test=16,
            epochs=61,
            schedule="constant",
            out=str(tmp_path / "r"),
        )
    )
    assert train(cfg)["status"] == "completed"
    per_epoch = [b - a for a, b in zip(marks, marks[1:])]  # epochs 1..59: training, then the epoch's writes
    early, late = per_epoch[5:15], per_epoch[45:]
    assert min(per_epoch) > 0
    # the same few rows of bytes every epoch (a row of metrics.csv is ~200 bytes; 50 epochs of growth >= 10 KB)
    assert max(late) - min(early) < 1000, (early, late)
    assert len(_rows(tmp_path / "r" / "metrics.csv")) == 61


def test_metrics_csv_is_appended_to_and_a_row_after_the_last_checkpoint_is_cut_on_resume(tmp_path, monkeypatch):
    """A run killed after appending a row (or part of one) but before its checkpoint resumes bit-identically: the
    file is cut back to the rows the checkpoint knows."""
    cfg = dict(SMALL, optimizer="sam", rho=0.1, epochs=4)
    straight = train(TrainConfig(**cfg, out=str(tmp_path / "a")))
    part = train(TrainConfig(**cfg, out=str(tmp_path / "b")), stop_after_epoch=2)
    assert part["status"] == "interrupted"
    metrics = tmp_path / "b" / "metrics.csv"
    assert len(_rows(metrics)) == 2
    with open(metrics, "a", newline="") as fh:  # as if killed between the append of epoch 3 and its checkpoint
        fh.write("3,9,0.1,1.0,0.5,1.0,0.5,1.0,0.1,,0.01,ok\n4,12,0.0")
    summary = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert summary["status"] == "running" and summary["epochs_done"] == 2
    resumed = train(TrainConfig(**cfg, out=str(tmp_path / "b")), resume=True)
    assert resumed["status"] == "completed"
    for k, v in straight["params"].items():
        assert torch.equal(v, resumed["params"][k]), k
    assert _without_seconds(_rows(metrics)) == _without_seconds(_rows(tmp_path / "a" / "metrics.csv"))
    assert [dict(r, seconds=0) for r in resumed["history"]] == [dict(r, seconds=0) for r in straight["history"]]
    final = json.loads((tmp_path / "b" / "summary.json").read_text())  # the finished summary holds the history
    assert final["status"] == "completed" and len(final["history"]) == 4


def test_a_checkpoint_of_the_previous_format_still_resumes_bit_identically(tmp_path):
    """Checkpoints written before the history was appended (version 1) hold every row: resume rewrites the file."""
    cfg = dict(SMALL, optimizer="usam", rho=0.1, epochs=3)
    straight = train(TrainConfig(**cfg, out=str(tmp_path / "a")))
    part = train(TrainConfig(**cfg, out=str(tmp_path / "b")), stop_after_epoch=1)
    ckpt_path = tmp_path / "b" / "checkpoint.pt"
    ckpt = torch.load(ckpt_path, weights_only=True)
    rows = list(part["history"])
    old = {k: ckpt[k] for k in ("config", "epoch", "step", "model", "optimizer", "rng", "elapsed", "status")}
    old.update(
        version=1, rows=rows, summary=dict(json.loads((tmp_path / "b" / "summary.json").read_text()), history=rows)
    )
    torch.save(old, ckpt_path)
    (tmp_path / "b" / "metrics.csv").write_text(",".join(CSV_FIELDS) + "\n")  # lost rows: rewritten from the ckpt
    resumed = train(TrainConfig(**cfg, out=str(tmp_path / "b")), resume=True)
    for k, v in straight["params"].items():
        assert torch.equal(v, resumed["params"][k]), k
    a, b = _rows(tmp_path / "a" / "metrics.csv"), _rows(tmp_path / "b" / "metrics.csv")
    assert _without_seconds(a) == _without_seconds(b)


def test_resume_refuses_a_metrics_file_cut_or_edited_since_the_checkpoint(tmp_path):
    cfg = dict(SMALL, optimizer="sgd", epochs=3)
    train(TrainConfig(**cfg, out=str(tmp_path / "b")), stop_after_epoch=2)
    metrics = tmp_path / "b" / "metrics.csv"
    text = metrics.read_text()
    metrics.write_text(text.rsplit("\n", 2)[0] + "\n")  # one row lost
    with pytest.raises(TrainError, match=r"metrics.csv does not hold the 2 rows .* \(it was cut"):
        train(TrainConfig(**cfg, out=str(tmp_path / "b")), resume=True)
    lines = text.splitlines(keepends=True)
    cells = lines[2].split(",")
    cells[6] = "0.9" + cells[6][3:]  # epoch 2's test accuracy, same length
    metrics.write_text("".join(lines[:2]) + ",".join(cells))
    with pytest.raises(TrainError, match="edited"):
        train(TrainConfig(**cfg, out=str(tmp_path / "b")), resume=True)
    metrics.write_text(text)
    assert train(TrainConfig(**cfg, out=str(tmp_path / "b")), resume=True)["status"] == "completed"


# -- 2. bounds checked before any work -----------------------------------------------------------------------------


@pytest.mark.parametrize("momentum", [1e6, 1.0, -0.1, float("nan")])
def test_momentum_outside_0_1_is_refused(capsys, tmp_path, momentum):
    """Before: --momentum 1e6 was accepted (the momentum buffer grows geometrically)."""
    with pytest.raises(TrainError, match=r"--momentum must be a number in \[0, 1\)"):
        TrainConfig(momentum=momentum).validate()
    err = _one_line_error(capsys, [*SMALL_ARGS, "--momentum", str(momentum), "--out", str(tmp_path / "m")])
    assert "--momentum" in err and str(momentum) in err
    assert not (tmp_path / "m").exists()  # refused before the run folder is made
    TrainConfig(momentum=0.0).validate()
    TrainConfig(momentum=0.999).validate()


def test_absurd_epochs_are_refused(capsys, tmp_path):
    """Before: --epochs 1000000000 was accepted (a typo that runs for ever; the cosine schedule then never moves)."""
    with pytest.raises(TrainError, match=r"--epochs must be an integer in \[1, 1000000\].*got 1000000000"):
        TrainConfig(epochs=10**9).validate()
    _one_line_error(capsys, [*SMALL_ARGS, "--epochs", "1000000000", "--out", str(tmp_path / "e")])
    TrainConfig(epochs=10**6).validate()


def test_an_image_size_out_of_memory_reach_is_refused_before_any_work(capsys, tmp_path):
    """Before: `samkit train --dataset synthetic --image-size 100000` died in torch's allocator with a traceback."""
    with pytest.raises(TrainError, match=r"--image-size 100000"):
        TrainConfig(dataset="synthetic", image_size=100_000).validate()
    err = _one_line_error(capsys, [*SMALL_ARGS, "--image-size", "100000", "--out", str(tmp_path / "i")])
    assert "--image-size 100000" in err and "memory" in err
    assert not (tmp_path / "i").exists()


def test_the_memory_estimate_names_what_is_too_big(monkeypatch):
    import samkit.train.config as config

    monkeypatch.setattr(config, "physical_memory", lambda: 200 * 2**20)  # a 200 MiB machine
    small = TrainConfig(dataset="synthetic", model="cnn", image_size=28, batch_size=128)
    small.validate()  # the defaults fit
    with pytest.raises(TrainError, match=r"--batch-size 100000"):  # 100000 x 32 x 28² x 4 bytes = 10 GB
        dataclasses.replace(small, batch_size=100_000, synthetic_train=100_000).validate()
    with pytest.raises(TrainError, match=r"--synthetic-train 10000000"):
        dataclasses.replace(small, synthetic_train=10_000_000).validate()
    with pytest.raises(TrainError, match=r"--image-size 2048"):  # an MLP's first layer: 2048² x 256 weights
        dataclasses.replace(small, model="mlp", image_size=2048, synthetic_train=8, synthetic_test=8).validate()
    for dataset in ("fashion-mnist", "cifar10"):  # the real datasets' sizes are known: the defaults fit
        TrainConfig(dataset=dataset).validate()


# -- 3. the run folder is samkit's or refused ----------------------------------------------------------------------


def test_train_refuses_a_folder_with_the_users_files(capsys, tmp_path):
    """Before: `samkit train --out DIR` overwrote DIR/config.json and DIR/metrics.csv whatever DIR held."""
    mine = tmp_path / "project"
    mine.mkdir()
    (mine / "config.json").write_text('{"my": "settings"}')
    (mine / "notes.txt").write_text("my notes")
    err = _one_line_error(capsys, [*SMALL_ARGS, "--epochs", "1", "--out", str(mine)])
    assert "did not write" in err
    assert (mine / "config.json").read_text() == '{"my": "settings"}'
    assert sorted(p.name for p in mine.iterdir() if p.name != ".lock") == ["config.json", "notes.txt"]
    # from Python too, before any training
    with pytest.raises(UnsafePathError, match="did not write"):
        train(TrainConfig(**SMALL, epochs=1, out=str(mine)))
    # a lone config.json of the user's is not mistaken for a run's
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text('{"lr": 1}')
    with pytest.raises(UnsafePathError, match="config.json"):
        train(TrainConfig(**SMALL, epochs=1, out=str(other)))


def test_a_run_folder_of_an_older_samkit_is_still_resumed(capsys, tmp_path):
    """A run folder without the marker (written before it existed) whose files are a run's: --resume works."""
    out = tmp_path / "run"
    assert samkit_main(["train", *SMALL_ARGS, "--epochs", "3", "--quiet", "--out", str(out)]) == 0
    assert (out / MARKER).is_file()
    full = _rows(out / "metrics.csv")
    train(TrainConfig(**SMALL, epochs=3, out=str(tmp_path / "old")), stop_after_epoch=1)
    (tmp_path / "old" / MARKER).unlink()
    code = samkit_main(["train", *SMALL_ARGS, "--epochs", "3", "--quiet", "--resume", "--out", str(tmp_path / "old")])
    assert code == 0, capsys.readouterr().err
    assert _without_seconds(_rows(tmp_path / "old" / "metrics.csv")) == _without_seconds(full)
    # a link inside a run folder is refused
    (out / "summary.json").unlink()
    (out / "summary.json").symlink_to(tmp_path / "elsewhere.json")
    with pytest.raises(UnsafePathError, match="symbolic link"):
        train(TrainConfig(**SMALL, epochs=3, out=str(out)), resume=True)
    assert not (tmp_path / "elsewhere.json").exists()
