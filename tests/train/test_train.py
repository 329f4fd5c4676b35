"""samkit.train: CLI outputs, bad flags, bit-identical resume, the diverged path, and 2-process torchrun."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cifar_files import write_folder

from samkit.cli import main as samkit_main
from samkit.train import TrainConfig, TrainError, train

SMALL = dict(dataset="synthetic", model="mlp", batch_size=32, synthetic_train=96, synthetic_test=48, image_size=8)
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


def main(argv: list[str]) -> int:
    """``samkit train ARGV``."""
    return samkit_main(["train", *argv])


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_cli_writes_csv_checkpoint_and_summary(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(
        [
            *SMALL_ARGS,
            "--optimizer",
            "sam",
            "--epochs",
            "2",
            "--sharpness-every",
            "1",
            "--sharpness-batches",
            "1",
            "--sharpness-batch-size",
            "32",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    rows = _rows(out / "metrics.csv")
    assert [r["epoch"] for r in rows] == ["1", "2"] and all(r["status"] == "ok" for r in rows)
    for key in ("train_loss", "train_acc", "test_loss", "test_acc", "grad_norm", "eps_norm", "top_eigenvalue"):
        assert all(float(r[key]) == float(r[key]) for r in rows), key  # present and not NaN
    assert abs(float(rows[0]["eps_norm"]) - 0.05) < 1e-5  # SAM: ‖ε‖ = ρ
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs_done"] == 2
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == 2 and ckpt["status"] == "completed"
    assert "completed" in capsys.readouterr().out
    # rerunning into the same folder without --resume is refused; with --resume it is a no-op
    assert main([*SMALL_ARGS, "--optimizer", "sam", "--epochs", "2", "--out", str(out)]) == 2
    assert "--resume" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--optimizer", "adam"], "invalid choice"),
        (["--rho", "abc"], "invalid float"),
        (["--optimizer", "unified"], "needs --lam"),
        (["--optimizer", "sam", "--lam", "0.5"], "only used with --optimizer unified"),
        (["--rho", "-1"], "--rho must be"),
        (["--epochs", "0"], "--epochs must be an integer >= 1, got 0"),
        (["--dataset", "cifar10", "--data-dir", "/nonexistent"], "cifar-10-python.tar.gz"),
    ],
)
def test_bad_flags_print_one_line_and_exit_2(tmp_path, capsys, argv, message):
    try:
        code = main([*SMALL_ARGS, "--out", str(tmp_path / "x"), *argv])
    except SystemExit as e:
        code = e.code
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and err.startswith("samkit train: error:")


@pytest.mark.parametrize("optimizer", ["sam", "usam", "sgd"])
def test_resume_after_interruption_is_bit_identical(tmp_path, optimizer):
    cfg = dict(SMALL, optimizer=optimizer, epochs=3, progress=False, rho=0.1)
    straight = train(TrainConfig(**cfg, out=str(tmp_path / "a")))
    part = train(TrainConfig(**cfg, out=str(tmp_path / "b")), stop_after_epoch=1)
    assert part["status"] == "interrupted"
    resumed = train(TrainConfig(**cfg, out=str(tmp_path / "b")), resume=True)
    assert resumed["status"] == "completed"
    for k, v in straight["params"].items():
        assert torch.equal(v, resumed["params"][k]), k
    a, b = _rows(tmp_path / "a" / "metrics.csv"), _rows(tmp_path / "b" / "metrics.csv")
    drop = ("seconds",)
    assert [{k: v for k, v in r.items() if k not in drop} for r in a] == [
        {k: v for k, v in r.items() if k not in drop} for r in b
    ]


def test_resume_rejects_a_changed_config(tmp_path):
    cfg = dict(SMALL, optimizer="sam", epochs=2, progress=False)
    train(TrainConfig(**cfg, out=str(tmp_path / "r")), stop_after_epoch=1)
    with pytest.raises(TrainError, match="rho: 0.05 -> 0.2"):
        train(TrainConfig(**dict(cfg, rho=0.2), out=str(tmp_path / "r")), resume=True)
    with pytest.raises(TrainError, match="no checkpoint"):
        train(TrainConfig(**cfg, out=str(tmp_path / "none")), resume=True)


def test_resnet20_with_batchnorm_trains_and_resumes(tmp_path):
    cfg = dict(
        SMALL,
        model="resnet20",
        optimizer="sam",
        epochs=2,
        progress=False,
        synthetic_train=32,
        synthetic_test=16,
        batch_size=16,
        image_size=8,
        channels=3,
        augment=True,
    )
    straight = train(TrainConfig(**cfg, out=str(tmp_path / "a")))
    train(TrainConfig(**cfg, out=str(tmp_path / "b")), stop_after_epoch=1)
    resumed = train(TrainConfig(**cfg, out=str(tmp_path / "b")), resume=True)
    for k, v in straight["params"].items():  # includes BatchNorm running statistics
        assert torch.equal(v, resumed["params"][k]), k


def test_nan_loss_ends_the_run_as_diverged(tmp_path, capsys):
    out = tmp_path / "div"
    code = main(
        [
            *SMALL_ARGS,
            "--optimizer",
            "usam",
            "--rho",
            "1e4",
            "--lr",
            "5",
            "--momentum",
            "0",
            "--schedule",
            "constant",
            "--epochs",
            "5",
            "--out",
            str(out),
        ]
    )
    assert code == 0  # divergence is a result, not a crash
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["diverged_epoch"] >= 1 and summary["diverged_step"] >= 1
    rows = _rows(out / "metrics.csv")
    assert rows[-1]["status"] == "diverged" and rows[-1]["epoch"] == str(summary["diverged_epoch"])
    assert "diverged" in capsys.readouterr().err
    # resuming a diverged run does nothing and keeps the verdict
    again = train(
        TrainConfig(
            **dict(
                SMALL,
                optimizer="usam",
                rho=1e4,
                lr=5.0,
                momentum=0.0,
                schedule="constant",
                epochs=5,
                progress=False,
                threads=1,
                out=str(out),
            )
        ),
        resume=True,
    )
    assert again["status"] == "diverged"
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)  # the last finite weights, marked diverged
    assert ckpt["status"] == "diverged" and ckpt["epoch"] == summary["diverged_epoch"] - 1
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


def test_samkit_cli_has_the_train_command(tmp_path, capsys):
    assert samkit_main(["train", *SMALL_ARGS, "--epochs", "1", "--quiet", "--out", str(tmp_path / "c")]) == 0
    assert (tmp_path / "c" / "metrics.csv").exists()
    assert samkit_main(["train", "--optimizer", "adam"]) == 2  # main returns argparse's exit code too
    assert capsys.readouterr().err.count("\n") == 1


def test_torchrun_two_cpu_processes(tmp_path):
    """``torchrun --nproc_per_node=2 -m samkit.train ...`` with gloo on CPU (``-m samkit train`` is the same entry)."""
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).resolve().parents[2] / "src"))
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "samkit.train",
        *SMALL_ARGS,
        "--optimizer",
        "sam",
        "--epochs",
        "2",
        "--out",
        str(out),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["world_size"] == 2
    rows = _rows(out / "metrics.csv")
    assert len(rows) == 2 and float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    # each rank saw half of the 96 examples per epoch: 2 ranks × 2 batches of ≤ 32
    assert rows[0]["step"] == "2"
    assert proc.stdout.count("epoch 1/2") == 1  # only rank 0 prints


def test_tensorboard_flag_without_the_package_is_a_one_line_error(tmp_path, capsys):
    try:
        import torch.utils.tensorboard  # noqa: F401

        pytest.skip("tensorboard is installed")
    except ImportError:
        pass
    code = main([*SMALL_ARGS, "--epochs", "1", "--tensorboard", "--out", str(tmp_path / "tb")])
    assert code == 2 and "pip install tensorboard" in capsys.readouterr().err


def test_cifar10_folder_trains_with_augmentation(tmp_path, monkeypatch):
    monkeypatch.delenv("SAMKIT_DATA_DIR", raising=False)
    write_folder(tmp_path / "cifar-10-batches-py", n=8)
    cfg = dict(
        dataset="cifar10",
        data_dir=str(tmp_path),
        model="cnn",
        optimizer="sam",
        epochs=1,
        batch_size=16,
        progress=False,
        quiet=True,
    )
    with pytest.raises(TrainError, match="data_batch_1 is not a known CIFAR-10 file: its md5 is"):
        train(TrainConfig(**cfg))  # not the official files: refused unless verification is turned off
    s = train(TrainConfig(**cfg, verify_data=False))
    assert s["status"] == "completed" and s["config"]["augment"] is None  # None: on by default for CIFAR
    assert len(s["history"]) == 1 and 0.0 <= s["final_test_acc"] <= 1.0


def test_decay_schedule_is_constant_then_linear_to_zero():
    cfg = TrainConfig(lr=0.1, schedule="decay", decay_frac=0.25)
    # 12 steps, the last 3 decay: lr·(12 − step)/3 from step 9 on
    assert [cfg.lr_at(s, 12) for s in (0, 5, 9, 10, 11, 12)] == [0.1, 0.1, 0.1, 0.1 * 2 / 3, 0.1 / 3, 0.0]
    whole = TrainConfig(lr=0.2, schedule="decay", decay_frac=1.0)
    assert [whole.lr_at(s, 4) for s in range(5)] == pytest.approx([0.2, 0.15, 0.1, 0.05, 0.0], rel=1e-15, abs=0)
    for bad in (0.0, -0.1, 1.5, float("nan")):
        with pytest.raises(TrainError, match=r"--decay-frac must be a number in \(0, 1\]"):
            TrainConfig(schedule="decay", decay_frac=bad).validate()


@pytest.mark.parametrize("schedule", ["decay", "cosine"])
def test_the_loop_applies_the_scheduled_lr_at_every_step(schedule):
    """The lr each optimizer step runs with is exactly ``cfg.lr_at(step, total)``."""
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    cfg = TrainConfig(
        **dict(SMALL, optimizer="sgd", epochs=4, progress=False, quiet=True, lr=0.1, schedule=schedule, decay_frac=0.25)
    )
    seen: list[float] = []
    handle = register_optimizer_step_pre_hook(lambda opt, args, kwargs: seen.append(opt.param_groups[0]["lr"]))
    try:
        summary = train(cfg)
    finally:
        handle.remove()
    total = 4 * 3  # 96 examples in batches of 32
    assert seen == [cfg.lr_at(s, total) for s in range(total)]
    assert [r["lr"] for r in summary["history"]] == [cfg.lr_at(s, total) for s in (3, 6, 9, 12)]


def test_every_config_field_has_a_train_flag_with_help():
    from samkit.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command").choices["train"]
    flags = {opt: a for a in sub._actions for opt in a.option_strings}
    for f in dataclasses.fields(TrainConfig):
        flag = (
            "--no-progress"
            if f.name == "progress"
            else "--no-verify-data"
            if f.name == "verify_data"
            else ("--" + f.name.replace("_", "-"))
        )
        assert flag in flags and flags[flag].help, flag
    assert sub.prog == "samkit train"


@pytest.mark.parametrize("entry", [["-m", "samkit", "train"], ["-m", "samkit.train"]])
def test_module_entry_points(entry, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2] / "src"))
    proc = subprocess.run([sys.executable, *entry, "--optimizer", "adam"], capture_output=True, text=True, env=env)
    assert proc.returncode == 2 and proc.stderr.startswith("samkit train: error: argument --optimizer: invalid choice")
    assert proc.stderr.count("\n") == 1


def test_samkit_threads_sets_the_thread_count_and_a_bad_value_is_one_line(tmp_path, capsys, monkeypatch):
    from samkit._threads import default_threads

    monkeypatch.setenv("SAMKIT_THREADS", "3")
    assert default_threads() == 3 and default_threads(world=4) == 3
    monkeypatch.delenv("SAMKIT_THREADS")
    assert default_threads() == 1 and default_threads(world=2) == max(1, (os.cpu_count() or 1) // 2)
    monkeypatch.setenv("SAMKIT_THREADS", "two")
    assert main([*SMALL_ARGS, "--threads", "0", "--epochs", "1", "--out", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err
    assert err == "samkit train: error: SAMKIT_THREADS must be an integer >= 1, got 'two'\n"
