"""The model is left exactly as it was (modes, parameters, .grad, buffers); bad input gets a clear ValueError."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from samkit.models import MLP, ResNet20
from samkit.sharpness import (
    average_sharpness,
    hessian_trace,
    hvp,
    hvp_fn,
    top_eigenvalues,
    top_eigenvalues_fn,
    worst_case_sharpness,
)

F = nn.functional


def snapshot(model: nn.Module) -> dict:
    return {
        "modes": [(name, m.training) for name, m in model.named_modules()],
        "params": {k: p.detach().clone() for k, p in model.named_parameters()},
        "grads": {k: None if p.grad is None else p.grad.clone() for k, p in model.named_parameters()},
        "buffers": {k: b.clone() for k, b in model.named_buffers()},
        "dtype": next(model.parameters()).dtype,
    }


def assert_same(before: dict, model: nn.Module) -> None:
    after = snapshot(model)
    assert after["modes"] == before["modes"]
    assert after["dtype"] == before["dtype"]
    for key in ("params", "buffers"):
        assert after[key].keys() == before[key].keys()
        for k in before[key]:
            assert torch.equal(after[key][k], before[key][k]), f"{key} {k} changed"
    for k, g in before["grads"].items():
        if g is None:
            assert after["grads"][k] is None, f".grad of {k} was created"
        else:
            assert torch.equal(after["grads"][k], g), f".grad of {k} changed"


def resnet_setup():
    torch.manual_seed(0)
    model = ResNet20(in_channels=3, num_classes=10, width=4)
    model.train()
    model.blocks[1].eval()  # mixed modes must come back submodule by submodule
    x = torch.randn(6, 3, 8, 8)
    y = torch.randint(0, 10, (6,))
    model(x).sum().backward()  # running statistics move away from their initial values, grads exist
    model.stem[0].weight.grad = None  # and one .grad is None
    return model, [(x[:4], y[:4]), (x[4:], y[4:])]


@pytest.mark.parametrize("train_mode", [False, True])
def test_model_state_untouched(train_mode):
    model, batches = resnet_setup()
    before = snapshot(model)
    ce = F.cross_entropy
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # max_iter is tiny on purpose
        top_eigenvalues(model, ce, batches, k=2, max_iter=3, train_mode=train_mode)
        top_eigenvalues(model, ce, batches, k=1, method="power", max_iter=2, train_mode=train_mode)
        top_eigenvalues(model, ce, batches, k=1, max_iter=2, train_mode=train_mode, dtype=torch.float64)
    hessian_trace(model, ce, batches, n_samples=2, train_mode=train_mode)
    worst_case_sharpness(model, ce, batches, rho=0.05, steps=2, restarts=2, train_mode=train_mode)
    average_sharpness(model, ce, batches, sigma=0.01, n_samples=2, train_mode=train_mode)
    assert_same(before, model)


def test_eval_mode_by_default_and_train_mode_option():
    """A BN model gives the eval-mode Hessian by default whatever mode it is in; train_mode=True differs."""
    model, batches = resnet_setup()
    v = torch.randn(sum(p.numel() for p in model.parameters()), generator=torch.Generator().manual_seed(0))
    ce = F.cross_entropy
    hv_default = hvp(model, ce, batches, v)
    model.eval()
    torch.testing.assert_close(hvp(model, ce, batches, v), hv_default, rtol=0, atol=0)
    model.train()
    torch.testing.assert_close(hvp(model, ce, batches, v), hv_default, rtol=0, atol=0)
    hv_train = hvp(model, ce, batches, v, train_mode=True)
    assert (hv_train - hv_default).norm() > 1e-3 * hv_default.norm()
    # train_mode uses batch statistics: the product is the per-batch train-mode Hessian, not a mix of modes
    model.eval()
    torch.testing.assert_close(hvp(model, ce, batches, v, train_mode=True), hv_train, rtol=0, atol=0)


def small():
    torch.manual_seed(0)
    return MLP(in_features=4, hidden=(3,), num_classes=2), [(torch.randn(5, 4), torch.randint(0, 2, (5,)))]


@pytest.mark.parametrize("k", [0, -1, 26, 2.0, True])
def test_bad_k(k):
    model, batches = small()  # 4*3 + 3 + 3*2 + 2 = 23 parameters
    with pytest.raises(
        ValueError, match=rf"k must be an integer with 1 <= k <= 23 \(the number of parameters is n = 23\), got {k!r}"
    ):
        top_eigenvalues(model, F.cross_entropy, batches, k=k)


def test_bad_method_tol_max_iter():
    model, batches = small()
    with pytest.raises(ValueError, match=r"unknown method 'arnoldi'; allowed: 'lanczos', 'power'"):
        top_eigenvalues(model, F.cross_entropy, batches, method="arnoldi")
    with pytest.raises(ValueError, match=r"tol must be a positive finite number, got 0"):
        top_eigenvalues(model, F.cross_entropy, batches, tol=0)
    with pytest.raises(ValueError, match=r"max_iter must be an integer >= 1 \(or None\), got 0"):
        top_eigenvalues(model, F.cross_entropy, batches, max_iter=0)


def test_non_scalar_loss():
    model, batches = small()
    per_sample = lambda out, y: F.cross_entropy(out, y, reduction="none")  # noqa: E731
    for call in (
        lambda: top_eigenvalues(model, per_sample, batches),
        lambda: hessian_trace(model, per_sample, batches, n_samples=2),
        lambda: worst_case_sharpness(model, per_sample, batches, rho=0.1),
        lambda: average_sharpness(model, per_sample, batches, sigma=0.1),
    ):
        with pytest.raises(ValueError, match=r"loss_fn must return a scalar .*got shape \(5,\)"):
            call()
    with pytest.raises(ValueError, match=r"f must return a scalar \(0-dimensional\) loss, got shape \(3,\)"):
        hvp_fn(lambda x: x**2, torch.zeros(3), torch.ones(3))
    with pytest.raises(ValueError, match=r"must return a scalar \(a function\) or a tensor shaped like x"):
        top_eigenvalues_fn(lambda x: x[:2], torch.zeros(3))


def test_empty_batches():
    model, _ = small()
    for empty in ([], iter([]), [(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))]):
        with pytest.raises(ValueError, match=r"batches is empty"):
            top_eigenvalues(model, F.cross_entropy, empty)


def test_bad_sharpness_arguments():
    model, batches = small()
    ce = F.cross_entropy
    with pytest.raises(ValueError, match=r"rho must be a positive finite number, got -0.1"):
        worst_case_sharpness(model, ce, batches, rho=-0.1)
    with pytest.raises(ValueError, match=r"steps must be an integer >= 1, got 0"):
        worst_case_sharpness(model, ce, batches, rho=0.1, steps=0)
    with pytest.raises(ValueError, match=r"sigma must be a positive finite number, got 0"):
        average_sharpness(model, ce, batches, sigma=0)
    with pytest.raises(ValueError, match=r"n_samples must be an integer >= 2"):
        hessian_trace(model, ce, batches, n_samples=1)
    with pytest.raises(ValueError, match=r"no parameters with requires_grad=True"):
        top_eigenvalues(nn.Flatten(), ce, batches)
