"""``samkit train --optimizer``: every optimizer of the library (issue 14), built right and stepping by its rule.

The one-step checks recompute each rule by hand in float64 (plain autograd, no samkit code in the expected
value): ASAM's ε = ρ T² g / ‖T g‖ with T = |w| + η on the weights and T = 1 on the bias, GSAM's descent along
d = g_p − α g_⊥.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

import samkit
from samkit.cli import build_parser, main, train_config
from samkit.train import OPTIMIZERS, TrainConfig, TrainError, build_optimizer, train
from samkit.train.config import GSAM_ALPHA

SMALL = dict(dataset="synthetic", model="mlp", batch_size=32, synthetic_train=96, synthetic_test=48, image_size=8)
LR, RHO = 0.1, 0.3


def _cfg(optimizer: str, **kw) -> TrainConfig:
    base = dict(optimizer=optimizer, rho=RHO, lr=LR, momentum=0.0, weight_decay=0.0)
    if optimizer == "unified":
        base["lam"] = 0.5
    return TrainConfig(**{**base, **kw})


def test_the_cli_offers_every_optimizer_of_the_library():
    assert set(OPTIMIZERS) == {"sgd", "sam", "usam", "unified", "asam", "gsam"}
    for name in OPTIMIZERS:
        extra = ["--lam", "0.5"] if name == "unified" else []
        cfg = train_config(build_parser().parse_args(["train", "--optimizer", name, *extra]))
        cfg.validate()
        assert cfg.optimizer == name


@pytest.mark.parametrize(
    "name, cls, normalization, adaptive",
    [
        ("sgd", torch.optim.SGD, None, None),
        ("sam", samkit.SAM, "l2", [False]),
        ("usam", samkit.SAM, "none", [False]),
        ("unified", samkit.SAM, "unified", [False]),
        ("asam", samkit.SAM, "l2", [True, False]),
        ("gsam", samkit.GSAM, "l2", [False]),
    ],
)
def test_each_name_builds_the_right_optimizer(name, cls, normalization, adaptive):
    model = torch.nn.Linear(3, 2)
    opt = build_optimizer(_cfg(name), model)
    assert type(opt) is cls
    if normalization is None:
        return
    assert opt.normalization == normalization
    assert type(opt.base_optimizer) is torch.optim.SGD
    assert [g["adaptive"] for g in opt.param_groups] == adaptive
    assert all(g["rho"] == RHO and g["lr"] == LR for g in opt.param_groups)
    if name == "asam":  # the weight is rescaled, the bias is not
        assert [p.shape for p in opt.param_groups[0]["params"]] == [torch.Size([2, 3])]
        assert [p.shape for p in opt.param_groups[1]["params"]] == [torch.Size([2])]
    if name == "gsam":
        assert opt.alpha == GSAM_ALPHA
        assert build_optimizer(_cfg(name, gsam_alpha=0.25), model).alpha == 0.25
    if name == "unified":
        assert opt.lam == 0.5


def _data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(12, 3, generator=g, dtype=torch.float64), torch.randn(12, 2, generator=g, dtype=torch.float64)


def _loss(w, b, x, y):
    return ((x @ w.T + b - y) ** 2).mean()


def _grads(w, b, x, y):
    w, b = w.clone().requires_grad_(), b.clone().requires_grad_()
    return torch.autograd.grad(_loss(w, b, x, y), (w, b))


def _one_step(name: str, **kw) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(w0, b0, w1, b1): the weights before and after one step of ``build_optimizer`` on a float64 linear model."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2).double()
    w0, b0 = model.weight.detach().clone(), model.bias.detach().clone()
    opt = build_optimizer(_cfg(name, **kw), model)
    x, y = _data()

    def closure():
        opt.zero_grad()
        loss = _loss(model.weight, model.bias, x, y)
        loss.backward()
        return loss

    opt.step(closure)
    return w0, b0, model.weight.detach(), model.bias.detach()


def test_asam_moves_the_weights_by_its_rule():
    w0, b0, w1, b1 = _one_step("asam")
    x, y = _data()
    gw, gb = _grads(w0, b0, x, y)
    tw = w0.abs() + 0.01  # ASAM's T = |w| + η on the weight; the bias is excluded (T = 1)
    norm = torch.sqrt(((tw * gw) ** 2).sum() + (gb**2).sum())
    ew, eb = RHO * tw**2 * gw / norm, RHO * gb / norm
    pw, pb = _grads(w0 + ew, b0 + eb, x, y)
    torch.testing.assert_close(w1, w0 - LR * pw, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(b1, b0 - LR * pb, rtol=1e-12, atol=1e-14)
    # and it is not SAM's step
    _, _, ws, _ = _one_step("sam")
    assert (ws - w1).abs().max() > 1e-6


@pytest.mark.parametrize("alpha", [None, 0.0, 0.3])
def test_gsam_moves_the_weights_by_its_rule(alpha):
    w0, b0, w1, b1 = _one_step("gsam", gsam_alpha=alpha)
    a = GSAM_ALPHA if alpha is None else alpha
    x, y = _data()
    g = torch.cat([t.flatten() for t in _grads(w0, b0, x, y)])
    eps = RHO * g / g.norm()
    gp = torch.cat([t.flatten() for t in _grads(w0 + eps[:6].view(2, 3), b0 + eps[6:], x, y)])
    g_perp = g - (g @ gp) / (gp @ gp) * gp
    step = LR * (gp - a * g_perp)
    torch.testing.assert_close(w1, w0 - step[:6].view(2, 3), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(b1, b0 - step[6:], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", ["asam", "gsam"])
def test_one_training_epoch_runs_and_perturbs(name, tmp_path):
    cfg = TrainConfig(**SMALL, optimizer=name, rho=0.5, epochs=1, progress=False, quiet=True, threads=1)
    summary = train(dataclasses.replace(cfg, out=str(tmp_path / name)))
    assert summary["status"] == "completed"
    row = summary["history"][0]
    assert row["eps_norm"] > 0 and row["train_loss"] == row["train_loss"]  # perturbed, finite
    sgd = train(dataclasses.replace(cfg, optimizer="sgd", out=None))
    assert sgd["history"][0]["train_loss"] != row["train_loss"]  # not SGD in disguise
    # --resume of a finished run reads its checkpoint back through SAM.load_state_dict's checks
    again = train(dataclasses.replace(cfg, out=str(tmp_path / name)), resume=True)
    assert again["final_test_acc"] == summary["final_test_acc"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--optimizer", "sam", "--gsam-alpha", "0.1"], "--gsam-alpha is only used with --optimizer gsam"),
        (["--optimizer", "gsam", "--gsam-alpha", "-1"], "--gsam-alpha must be a finite number >= 0, got -1"),
        (["--optimizer", "gsam", "--gsam-alpha", "nan"], "--gsam-alpha must be a finite number"),
        (["--optimizer", "adamw"], "invalid choice: 'adamw'"),
    ],
)
def test_bad_optimizer_flags_are_one_line(argv, message, tmp_path, capsys):
    assert main(["train", "--dataset", "synthetic", "--out", str(tmp_path / "x"), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("samkit train: error: ") and message in err and err.count("\n") == 1
    with pytest.raises(TrainError):
        if "invalid choice" not in message:
            TrainConfig(**{**SMALL, "optimizer": argv[1], "gsam_alpha": float(argv[3])}).validate()
        else:
            TrainConfig(optimizer="adamw").validate()
