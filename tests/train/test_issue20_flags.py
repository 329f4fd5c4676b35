"""``samkit train`` / ``samkit sweep`` flags of issue 20: ``--sam-start`` (late SAM), ``--sam-on`` (SAM-ON) and
``--precision bf16`` (bfloat16 autocast, no scaler)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from samkit.cli import build_parser, main, train_config
from samkit.optim import registry
from samkit.sweep import SweepRun, _only_where_used, run_name
from samkit.train import TrainConfig, TrainError, build_optimizer, train

TINY = dict(
    dataset="synthetic",
    model="mlp",
    batch_size=32,
    synthetic_train=128,
    synthetic_test=32,
    image_size=6,
    epochs=2,
    progress=False,
    quiet=True,
    threads=1,
    schedule="constant",
)


def _run(**kw):
    return train(TrainConfig(**{**TINY, **kw}))


# ---------------------------------------------------------------------------------------------- the flags
def test_the_flags_parse_into_the_config_and_are_sweepable():
    args = build_parser().parse_args(
        ["train", "--optimizer", "sam", "--sam-start", "0.5", "--sam-on", "norm", "--precision", "bf16"]
    )
    cfg = train_config(args)
    assert (cfg.sam_start, cfg.sam_on, cfg.precision) == (0.5, "norm", "bf16")
    defaults = train_config(build_parser().parse_args(["train"]))
    assert (defaults.sam_start, defaults.sam_on, defaults.precision) == (None, None, "fp32")
    grid = build_parser().parse_args(
        ["sweep", "--out", "x", "--sam-start", "0,0.5,1000", "--sam-on", "all,norm", "--precision", "fp32,bf16"]
    )
    assert grid.sam_start == [0.0, 0.5, 1000.0] and grid.sam_on == ["all", "norm"]
    assert grid.precision == ["fp32", "bf16"]


@pytest.mark.parametrize(
    "kw, message",
    [
        (
            dict(optimizer="sam", sam_start=1.5),
            "--sam-start must be a fraction in (0, 1) of the steps or a whole "
            "number of steps (0.5: SAM from half-way; 1000: SAM after 1000 base steps), got 1.5",
        ),
        (dict(optimizer="sam", sam_start=-0.5), "--sam-start must be a fraction in (0, 1)"),
        (dict(optimizer="sam", sam_start=float("nan")), "--sam-start must be a fraction in (0, 1)"),
        (
            dict(optimizer="sgd", sam_start=0.5),
            "--sam-start is only used with --optimizer sam or usam or unified or asam or gsam (got --optimizer sgd)",
        ),
        (
            dict(optimizer="asam", sam_on="norm"),
            "--sam-on is only used with --optimizer sam or usam or unified (got --optimizer asam)",
        ),
        (dict(optimizer="gsam", sam_on="norm"), "--sam-on is only used with --optimizer sam or usam or unified"),
        (dict(optimizer="sam", sam_on="bogus"), "--sam-on must be one of all, norm, got 'bogus'"),
        (
            dict(optimizer="sam", sam_on="norm", model="cnn"),
            "--sam-on norm perturbs only the normalization "
            "layers, and --model cnn has none (use --model cnn-small-bn or resnet20, or leave --sam-on out)",
        ),
        (dict(precision="fp16"), "unknown precision 'fp16'; choose from fp32, bf16"),
    ],
)
def test_bad_values_are_refused_naming_the_flag_and_the_value(kw, message):
    with pytest.raises(TrainError) as err:
        TrainConfig(**{**TINY, **kw}).validate()
    assert message in str(err.value)


def test_the_cli_refuses_bad_values_in_one_line(capsys, tmp_path):
    code = main(["train", "--optimizer", "sgd", "--sam-start", "0.5", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--sam-start is only used with --optimizer sam" in err
    code = main(["train", "--precision", "fp16", "--out", str(tmp_path / "r")])
    assert code == 2 and "invalid choice: 'fp16'" in capsys.readouterr().err


def test_a_start_at_or_past_the_last_step_is_refused_with_the_numbers():
    with pytest.raises(TrainError, match=r"--sam-start 8 is step 8, at or past the run's 8 steps \(2 epochs\)"):
        _run(optimizer="sam", sam_start=8)  # 128 examples / 32 = 4 steps per epoch, 2 epochs


def test_build_optimizer_resolves_the_start_and_builds_sam_on_groups():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2))
    opt = build_optimizer(TrainConfig(optimizer="usam", sam_start=0.3, sam_on="norm"), model, total_steps=10)
    assert opt.start == 3 and opt.normalization == "none"
    assert [(len(g["params"]), g["perturb"]) for g in opt.param_groups] == [(2, True), (4, False)]
    assert build_optimizer(TrainConfig(optimizer="gsam", sam_start=7), model).start == 7
    opt = build_optimizer(TrainConfig(optimizer="sam", sam_on="all"), model)
    assert opt.start == 0 and [g["perturb"] for g in opt.param_groups] == [True]
    with pytest.raises(ValueError, match="needs the total number of steps"):
        build_optimizer(TrainConfig(optimizer="sam", sam_start=0.5), model)
    assert registry.takers("sam_on") == ("sam", "usam", "unified")


# ---------------------------------------------------------------------------------------------- runs
def test_late_sam_run_is_the_sgd_run_until_the_start_then_perturbs(tmp_path):
    sgd = train(TrainConfig(**{**TINY, "optimizer": "sgd", "epochs": 1}))
    late = _run(optimizer="sam", sam_start=0.5)  # 8 steps: SGD for the first 4 (epoch 1), SAM after
    first, second = late["history"]
    assert first["eps_norm"] == 0.0 and first["grad_norm"] > 0  # the base steps: no perturbation, ‖g‖ at w
    assert (
        first["grad_norm"] == sgd["history"][0]["grad_norm"] and first["train_loss"] == sgd["history"][0]["train_loss"]
    )
    assert second["eps_norm"] == pytest.approx(0.05, rel=1e-5)  # SAM: ‖ε‖ = ρ
    halfway = train(TrainConfig(**{**TINY, "optimizer": "sam", "sam_start": 0.5}), stop_after_epoch=1)
    assert all(torch.equal(halfway["params"][k], sgd["params"][k]) for k in sgd["params"])  # bit for bit SGD


def test_late_sam_resume_is_bit_identical(tmp_path):
    cfg = TrainConfig(**{**TINY, "optimizer": "sam", "sam_start": 6, "epochs": 3, "out": str(tmp_path / "a")})
    whole = train(cfg)
    cut = dataclasses.replace(cfg, out=str(tmp_path / "b"))
    train(cut, stop_after_epoch=1)  # stops after step 4, before the start at step 6
    resumed = train(cut, resume=True)
    assert all(torch.equal(whole["params"][k], resumed["params"][k]) for k in whole["params"])
    assert [r["eps_norm"] for r in resumed["history"]] == [r["eps_norm"] for r in whole["history"]]


def test_sam_on_run_perturbs_only_the_batchnorm_parameters(tmp_path):
    kw = dict(model="resnet20", image_size=8, synthetic_train=64, epochs=1, optimizer="sam")
    full, on = _run(**kw), _run(**kw, sam_on="norm")
    assert on["status"] == full["status"] == "completed"
    assert on["history"][0]["eps_norm"] == pytest.approx(0.05, rel=1e-5)  # ‖ε‖ = ρ over the subset
    assert on["history"][0]["grad_norm"] < full["history"][0]["grad_norm"]  # ‖g_S‖ < ‖g‖
    conv = "stem.0.weight"
    assert not torch.equal(on["params"][conv], full["params"][conv])  # the convolutions still step, differently


def test_bf16_run_trains_close_to_the_fp32_run_and_the_cli_records_it(tmp_path, capsys):
    fp32, bf16 = _run(optimizer="sam"), _run(optimizer="sam", precision="bf16")
    assert bf16["status"] == "completed"
    a, b = fp32["history"][-1]["train_loss"], bf16["history"][-1]["train_loss"]
    assert a != b and abs(a - b) < 0.05 * a  # autocast changed the numbers, a little
    assert all(v.dtype == torch.float32 for v in bf16["params"].values())  # float32 weights under autocast
    out = tmp_path / "run"
    flags = ["--dataset", "synthetic", "--model", "mlp", "--synthetic-train", "64", "--synthetic-test", "32"]
    code = main(
        [
            "train",
            *flags,
            "--image-size",
            "6",
            "--epochs",
            "1",
            "--precision",
            "bf16",
            "--out",
            str(out),
            "--no-progress",
            "--quiet",
        ]
    )
    assert code == 0, capsys.readouterr().err
    assert json.loads((out / "config.json").read_text())["precision"] == "bf16"
    code = main(["train", *flags, "--image-size", "6", "--epochs", "2", "--out", str(out), "--resume"])
    assert code == 2 and "precision: 'bf16' -> 'fp32'" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- sweeps
def _runs(grid):
    from samkit.sweep import expand_grid

    out = []
    for point in expand_grid(grid):
        out.append(SweepRun(run_name(point), point, TrainConfig(**{**TINY, **point})))
    return out


def test_a_sweep_applies_sam_start_and_sam_on_only_to_the_optimizers_that_take_them():
    runs = _only_where_used(_runs({"optimizer": ["sgd", "sam"], "sam_start": [0.0, 0.5]}))
    assert [r.name for r in runs] == ["optimizer=sgd", "optimizer=sam,sam_start=0", "optimizer=sam,sam_start=0.5"]
    assert runs[0].config.sam_start is None
    runs = _only_where_used(_runs({"optimizer": ["asam", "sam"], "sam_on": ["all", "norm"]}))
    assert [r.name for r in runs] == ["optimizer=asam", "optimizer=sam,sam_on=all", "optimizer=sam,sam_on=norm"]
    for r in runs:
        dataclasses.replace(r.config, model="resnet20").validate()


def test_a_sweep_refuses_a_flag_no_run_takes(capsys, tmp_path):
    code = main(
        ["sweep", "--dataset", "synthetic", "--optimizer", "sgd,asam", "--sam-on", "norm", "--out", str(tmp_path / "s")]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "--sam-on is only used with --optimizer sam or usam or unified, and no run of the sweep uses it " in err
    assert "add one of sam, usam, unified to --optimizer or leave --sam-on out" in err
