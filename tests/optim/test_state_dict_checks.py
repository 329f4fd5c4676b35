"""``SAM.load_state_dict`` refuses a state saved with another rule or by another base optimizer (issue 14).

A refused load must leave the optimizer exactly as it was: each test compares the parameters after further
steps with a twin optimizer that never saw the bad state (bit for bit, float64).
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

import samkit


def _problem(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(16, 3, generator=g, dtype=torch.float64)
    y = torch.randn(16, 1, generator=g, dtype=torch.float64)
    return x, y


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Linear(3, 1).double()


def _steps(model: torch.nn.Module, opt: samkit.SAM, n: int) -> None:
    x, y = _problem()

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss

    for _ in range(n):
        opt.step(closure)


def _sam(model, base=torch.optim.SGD, **kw):
    base_kw = {"lr": 0.1, "momentum": 0.9} if base is torch.optim.SGD else {"lr": 0.01}
    return samkit.SAM(model.parameters(), base, **{"rho": 0.05, **kw}, **base_kw)


def _saved(**kw) -> dict:
    m = _model()
    opt = _sam(m, **kw)
    _steps(m, opt, 2)
    return opt.state_dict()


def _twins(**kw):
    """Two identical models and optimizers, each stepped twice."""
    out = []
    for _ in range(2):
        m = _model()
        opt = _sam(m, **kw)
        _steps(m, opt, 2)
        out.append((m, opt))
    return out


def _assert_same_after_steps(a, b, n: int = 3) -> None:
    (ma, oa), (mb, ob) = a, b
    _steps(ma, oa, n)
    _steps(mb, ob, n)
    for pa, pb in zip(ma.parameters(), mb.parameters()):
        assert torch.equal(pa, pb)
    assert oa.steps == ob.steps


@pytest.mark.parametrize(
    "saved_kw, target_kw, words",
    [
        ({"normalization": "l2"}, {"normalization": "none"}, "normalization='l2' (λ=1.0), not normalization='none'"),
        ({"normalization": "none"}, {"normalization": "l2"}, "normalization='none' (λ=0.0), not normalization='l2'"),
        (
            {"normalization": "unified", "lam": 0.25},
            {"normalization": "unified", "lam": 0.5},
            "normalization='unified' (λ=0.25), not normalization='unified' (λ=0.5)",
        ),
        ({"normalization": "l2"}, {"normalization": "unified", "lam": 1.0}, "normalization='l2'"),
    ],
)
def test_a_state_of_another_rule_is_refused_and_changes_nothing(saved_kw, target_kw, words):
    state = _saved(**saved_kw)
    keep, twin = _twins(**target_kw)
    with pytest.raises(ValueError, match="perturbation rule differs") as info:
        keep[1].load_state_dict(state)
    assert words in str(info.value)
    _assert_same_after_steps(keep, twin)


def test_usam_class_refuses_a_sam_checkpoint():
    m = _model()
    usam = samkit.USAM(m.parameters(), torch.optim.SGD, rho=0.05, lr=0.1)
    with pytest.raises(ValueError, match="normalization='l2'"):
        usam.load_state_dict(_saved(normalization="l2"))


def test_the_same_rule_loads_and_continues_exactly():
    (m1, o1), (m2, o2) = _twins(normalization="unified", lam=0.25)
    m3 = _model()
    m3.load_state_dict(m1.state_dict())
    o3 = _sam(m3, normalization="unified", lam=0.25)
    o3.load_state_dict(o1.state_dict())
    assert o3.steps == 2
    _assert_same_after_steps((m3, o3), (m2, o2))


def test_a_different_eps_warns_and_loads():
    state = _saved(eps=1e-12)
    m = _model()
    opt = _sam(m, eps=1e-8)
    with pytest.warns(UserWarning, match=r"eps=1e-12 into an optimizer with eps=1e-08"):
        opt.load_state_dict(state)
    assert opt.steps == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _sam(_model(), eps=1e-12).load_state_dict(state)  # the same eps: silent


@pytest.mark.parametrize("sgd_has_stepped", [True, False])
def test_an_sgd_state_into_adam_sam_is_refused_and_the_optimizer_still_steps(sgd_has_stepped):
    m = _model()
    sgd = _sam(m)
    if sgd_has_stepped:
        _steps(m, sgd, 1)  # per-parameter momentum buffers: torch's Adam raises KeyError 'step' on load
    state = sgd.state_dict()  # without steps: groups without Adam's betas/eps (Adam would fail at its next step)
    keep, twin = _twins(base=torch.optim.Adam)
    with pytest.raises(ValueError, match="does not fit the base optimizer Adam") as info:
        keep[1].load_state_dict(state)
    assert "unchanged" in str(info.value)
    assert keep[1].param_groups is keep[1].base_optimizer.param_groups
    assert "betas" in keep[1].param_groups[0]
    _assert_same_after_steps(keep, twin)


def test_an_adam_state_into_sgd_sam_is_refused():
    state = _saved(base=torch.optim.Adam)
    keep, twin = _twins()
    with pytest.raises(ValueError, match="does not fit the base optimizer SGD.*momentum"):
        keep[1].load_state_dict(state)
    _assert_same_after_steps(keep, twin)


def test_a_state_for_other_parameters_is_refused_and_changes_nothing():
    big = torch.nn.Linear(3, 2).double()
    other = _sam(big)
    state = copy.deepcopy(other.state_dict())
    state["param_groups"][0]["params"] = [0]  # one parameter where the target has two
    keep, twin = _twins()
    with pytest.raises(ValueError, match="for other parameters"):
        keep[1].load_state_dict(state)
    _assert_same_after_steps(keep, twin)


def test_a_plain_base_state_is_still_accepted():
    (m1, o1), (m2, o2) = _twins()
    plain = o1.base_optimizer.state_dict()
    m3 = _model()
    m3.load_state_dict(m1.state_dict())
    o3 = _sam(m3, normalization="none")  # no samkit entry: nothing to compare the rule with
    o3.load_state_dict(plain)
    assert o3.steps == 0
    torch.testing.assert_close(
        o3.base_optimizer.state_dict()["state"][0]["momentum_buffer"],
        o1.base_optimizer.state_dict()["state"][0]["momentum_buffer"],
        rtol=0,
        atol=0,
    )


@pytest.mark.parametrize(
    "extra, match",
    [
        ({"version": 99, "normalization": "l2", "lam": 1.0}, "newer samkit"),
        ("l2", "not one written by SAM.state_dict"),
        ({"normalization": "l2", "lam": 1.0, "steps": "many"}, "not integers"),
    ],
)
def test_a_damaged_samkit_entry_is_refused(extra, match):
    state = _saved()
    state["samkit"] = extra
    keep, twin = _twins()
    with pytest.raises(ValueError, match=match):
        keep[1].load_state_dict(state)
    _assert_same_after_steps(keep, twin)


def test_gsam_inherits_the_checks():
    m = _model()
    gsam = samkit.GSAM(m.parameters(), torch.optim.SGD, rho=0.05, alpha=0.1, normalization="none", lr=0.1)
    with pytest.raises(ValueError, match="perturbation rule differs"):
        gsam.load_state_dict(_saved(normalization="l2"))
