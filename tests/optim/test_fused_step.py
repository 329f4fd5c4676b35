"""The fused SAM step (``fused=True``) against the foreach path: equal to float rounding, the same decisions."""

import copy
import warnings

import pytest
import torch
from closures import mse_closure as _closure
from torch import nn

from samkit import GSAM, SAM, USAM, NonFiniteGradientError, asam_param_groups
from samkit.optim import ops as samkit_ops
from samkit.optim.fused import FusedStep

RTOL = {torch.float32: 1e-6, torch.float64: 1e-12}
ATOL = {torch.float32: 1e-7, torch.float64: 1e-15}


def _model(dtype=torch.float64, bn=False):
    torch.manual_seed(0)
    layers = [nn.Linear(6, 16)] + ([nn.BatchNorm1d(16)] if bn else []) + [nn.Tanh(), nn.Linear(16, 8), nn.Tanh()]
    return nn.Sequential(*layers, nn.Linear(8, 1)).to(dtype)


def _data(dtype=torch.float64, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(32, 6, generator=g).to(dtype), torch.randn(32, 1, generator=g).to(dtype)


def _build(name, net, fused, **kw):
    common = dict(lr=0.05, fused=fused, **kw)
    params = net.parameters()
    if name == "per_group_rho":
        mods = list(net)
        params = [
            {"params": mods[0].parameters(), "rho": 0.3},
            {"params": [p for m in mods[1:] for p in m.parameters()]},
        ]
    if name == "adam":
        return SAM(params, torch.optim.Adam, rho=0.1, **common)
    if name == "usam":
        return USAM(params, torch.optim.SGD, rho=0.1, momentum=0.9, **common)
    if name == "unified":
        return SAM(params, torch.optim.SGD, rho=0.1, normalization="unified", lam=0.3, momentum=0.9, **common)
    if name == "asam":
        return SAM(asam_param_groups(net), torch.optim.SGD, rho=0.5, adaptive=True, momentum=0.9, **common)
    if name == "gsam":
        return GSAM(params, torch.optim.SGD, rho=0.1, alpha=0.2, momentum=0.9, **common)
    return SAM(params, torch.optim.SGD, rho=0.1, momentum=0.9, weight_decay=5e-4, **common)


def _assert_close(a, b, dtype):
    for p, q in zip(a, b):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=RTOL[dtype], atol=ATOL[dtype])


def _pair(name, dtype=torch.float64, bn=False, steps=5, **kw):
    """Run foreach and fused side by side; return (models, optimizers)."""
    x, y = _data(dtype)
    models = [_model(dtype, bn) for _ in range(2)]
    opts = [_build(name, m, fused, **({"model": m} if bn else {}), **kw) for m, fused in zip(models, (False, True))]
    for _ in range(steps):
        losses = [o.step(_closure(m, o, x, y)) for m, o in zip(models, opts)]
        torch.testing.assert_close(losses[0], losses[1], rtol=RTOL[dtype] * 10, atol=0)
    return models, opts


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", ["sam", "usam", "unified", "asam", "gsam", "per_group_rho", "adam"])
def test_fused_equals_foreach_to_float_rounding(name, dtype):
    models, opts = _pair(name, dtype)
    _assert_close(models[0].parameters(), models[1].parameters(), dtype)
    torch.testing.assert_close(opts[0].last_grad_norm, opts[1].last_grad_norm, rtol=RTOL[dtype], atol=0)
    torch.testing.assert_close(
        opts[0].last_perturbation_norm, opts[1].last_perturbation_norm, rtol=RTOL[dtype] * 10, atol=0
    )
    if name != "asam":  # (ASAM's rule runs on the lists; the backup and restore are still flat)
        assert opts[1]._fused.layout is not None
        assert _all_flat(opts[1], models[1].parameters())


def _all_flat(opt, params):
    """Every parameter is a view of one of the fused step's flat buffers."""
    flats = opt._fused.layout.flat_params
    spans = [(f.data_ptr(), f.data_ptr() + f.numel() * f.element_size()) for f in flats]
    return all(any(a <= p.data_ptr() < b for a, b in spans) for p in params)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_with_batchnorm_model_keeps_the_statistics_of_the_first_pass(dtype):
    models, _ = _pair("sam", dtype, bn=True)
    _assert_close(models[0].parameters(), models[1].parameters(), dtype)
    _assert_close(models[0].buffers(), models[1].buffers(), dtype)


def test_restore_is_exact():
    model = _model(torch.float32)
    opt = _build("sam", model, True)
    x, y = _data(torch.float32)
    for _ in range(2):  # the first step lays the parameters out flat
        opt.step(_closure(model, opt, x, y))
    before = [p.detach().clone() for p in model.parameters()]
    _closure(model, opt, x, y)()
    opt.first_step()
    assert any(not torch.equal(p, b) for p, b in zip(model.parameters(), before))
    opt._restore()
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))


@pytest.mark.parametrize("mode", ["full", "m-sharpness"])
def test_accumulation(mode):
    x, y = _data()
    models = [_model() for _ in range(2)]
    opts = [_build("sam", m, f) for m, f in zip(models, (False, True))]
    chunks = [(x[:10], y[:10]), (x[10:], y[10:])]
    for _ in range(3):
        for m, o in zip(models, opts):
            o.step_accumulated(lambda b, m=m: nn.functional.mse_loss(m(b[0]), b[1]), chunks, mode=mode)
    _assert_close(models[0].parameters(), models[1].parameters(), torch.float64)


def _scaled_runs(bad_pass, fused):
    x, y = _data(torch.float32)
    model = _model(torch.float32)
    opt = USAM(model.parameters(), torch.optim.SGD, rho=0.1, lr=0.1, momentum=0.9, fused=fused)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    calls = []

    def closure():
        opt.zero_grad()
        calls.append(1)
        loss = nn.functional.mse_loss(model(x), y)
        if bad_pass is not None and len(calls) == {"first": 3, "second": 4}[bad_pass]:
            loss = loss * float("inf")
        scaler.scale(loss).backward()
        return loss

    for _ in range(3):
        opt.step(closure, scaler=scaler)
        scaler.update()
    return model, opt, scaler


@pytest.mark.parametrize("bad_pass", [None, "first", "second"])
def test_grad_scaler_overflow_gives_the_same_skips(bad_pass):
    (m0, o0, s0), (m1, o1, s1) = _scaled_runs(bad_pass, False), _scaled_runs(bad_pass, True)
    assert (o0.steps, o0.skipped_steps) == (o1.steps, o1.skipped_steps) == ((3, 0) if bad_pass is None else (2, 1))
    assert s0.get_scale() == s1.get_scale()
    _assert_close(m0.parameters(), m1.parameters(), torch.float32)


@pytest.mark.parametrize("on_nonfinite", ["raise", "skip"])
@pytest.mark.parametrize("bad_pass", ["first", "second"])
def test_nonfinite_gradient_same_decision(on_nonfinite, bad_pass):
    results = []
    for fused in (False, True):
        model = _model()
        opt = _build("sam", model, fused, on_nonfinite=on_nonfinite)
        x, y = _data()
        opt.step(_closure(model, opt, x, y))
        before = [p.detach().clone() for p in model.parameters()]
        calls = []

        def closure(model=model, opt=opt, calls=calls):
            opt.zero_grad()
            calls.append(1)
            loss = nn.functional.mse_loss(model(x), y)
            (loss * (float("nan") if len(calls) == {"first": 1, "second": 2}[bad_pass] else 1.0)).backward()
            return loss

        if on_nonfinite == "raise":
            with pytest.raises(NonFiniteGradientError, match=bad_pass):
                opt.step(closure)
        else:
            opt.step(closure)
        assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))  # untouched, restored
        results.append((opt.steps, opt.skipped_steps, opt.is_perturbed))
    assert results[0] == results[1]


def test_zero_gradient_gives_no_perturbation_and_no_nan():
    for fused in (False, True):
        model = _model()
        opt = _build("sam", model, fused, eps=0.0)
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        before = [p.detach().clone() for p in model.parameters()]
        opt.first_step()
        assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))
        assert opt.last_grad_norm.item() == 0.0 and opt.last_perturbation_norm.item() == 0.0
        opt.second_step()


def test_tiny_gradients_take_the_scale_safe_path_like_foreach():
    norms = []
    for fused in (False, True):
        model = _model()
        opt = _build("sam", model, fused, eps=0.0)
        for p in model.parameters():
            p.grad = torch.full_like(p, 1e-300)
        before = [p.detach().clone() for p in model.parameters()]
        opt.first_step()
        eps = torch.cat([(p.detach() - b).flatten() for p, b in zip(model.parameters(), before)])
        opt.second_step()
        norms.append((opt.last_grad_norm, torch.linalg.vector_norm(eps)))
    assert torch.equal(norms[0][0], norms[1][0])  # the foreach rule decided both
    torch.testing.assert_close(norms[1][1], torch.tensor(0.1, dtype=torch.float64), rtol=1e-12, atol=0)


def test_state_dict_round_trip_resumes_identically():
    x, y = _data()
    model = _model()
    opt = _build("sam", model, True)
    for _ in range(2):
        opt.step(_closure(model, opt, x, y))
    saved_model, saved_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    for _ in range(3):
        opt.step(_closure(model, opt, x, y))
    model2 = _model()
    model2.load_state_dict(saved_model)
    opt2 = _build("sam", model2, True)
    opt2.load_state_dict(saved_opt)
    for _ in range(3):
        opt2.step(_closure(model2, opt2, x, y))
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), model2.parameters()))
    assert (opt.steps, opt.skipped_steps) == (opt2.steps, opt2.skipped_steps)


def test_moving_the_parameters_rebuilds_the_flat_layout():
    x, y = _data()
    models = [_model() for _ in range(2)]
    opts = [_build("sam", m, f) for m, f in zip(models, (False, True))]
    for i in range(4):
        if i == 2:
            for m in models:
                for p in m.parameters():
                    p.data = p.data.clone()  # what model.to(...) does
        for m, o in zip(models, opts):
            o.step(_closure(m, o, x, y))
    _assert_close(models[0].parameters(), models[1].parameters(), torch.float64)
    assert _all_flat(opts[1], models[1].parameters())


def test_parameters_without_gradients_are_left_alone():
    x, y = _data()
    models = [_model() for _ in range(2)]
    for m in models:
        m[0].weight.requires_grad_(False)
    opts = [_build("sam", m, f) for m, f in zip(models, (False, True))]
    for _ in range(3):
        for m, o in zip(models, opts):
            o.step(_closure(m, o, x, y))
    _assert_close(models[0].parameters(), models[1].parameters(), torch.float64)
    assert torch.equal(models[0][0].weight, models[1][0].weight)


def test_non_contiguous_parameter_falls_back_to_foreach_with_a_warning():
    x, y = _data()
    models = [_model() for _ in range(2)]
    for m in models:
        m[0].weight = nn.Parameter(m[0].weight.detach().t().contiguous().t())
    opts = [_build("sam", m, f) for m, f in zip(models, (False, True))]
    with pytest.warns(UserWarning, match="not contiguous"):
        opts[1].step(_closure(models[1], opts[1], x, y))
    opts[0].step(_closure(models[0], opts[0], x, y))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once
        for m, o in zip(models, opts):
            o.step(_closure(m, o, x, y))
    for p, q in zip(models[0].parameters(), models[1].parameters()):
        assert torch.equal(p, q)  # the foreach path, bit for bit


def test_sparse_gradients_are_refused_clearly():
    emb = nn.Embedding(10, 3, sparse=True)
    opt = SAM(emb.parameters(), torch.optim.SGD, rho=0.1, lr=0.1, fused=True)
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(ValueError, match="sparse gradients"):
        opt.first_step()
    assert not opt.is_perturbed


def test_bad_options():
    p = [nn.Parameter(torch.ones(2))]
    with pytest.raises(ValueError, match="fused=True needs foreach=True"):
        SAM(p, torch.optim.SGD, lr=0.1, fused=True, foreach=False)
    with pytest.raises(TypeError, match="fused must be True or False"):
        SAM(p, torch.optim.SGD, lr=0.1, fused="yes")
    assert isinstance(SAM(p, torch.optim.SGD, lr=0.1, fused=True)._fused, FusedStep)
    assert SAM(p, torch.optim.SGD, lr=0.1)._fused is None


def test_mixed_dtypes_use_one_flat_buffer_each():
    torch.manual_seed(0)
    a, b = nn.Linear(4, 4).double(), nn.Linear(4, 1)
    models = [(copy.deepcopy(a), copy.deepcopy(b)) for _ in range(2)]
    opts = [
        SAM([*m[0].parameters(), *m[1].parameters()], torch.optim.SGD, rho=0.1, lr=0.1, fused=f)
        for m, f in zip(models, (False, True))
    ]
    x = torch.randn(8, 4, dtype=torch.float64)
    for _ in range(3):
        for (ma, mb), o in zip(models, opts):
            o.zero_grad()
            mb(ma(x).float()).square().mean().backward()
            o.first_step(zero_grad=True)
            mb(ma(x).float()).square().mean().backward()
            o.second_step()
    assert len(opts[1]._fused.layout.flat_params) == 2
    for (ma0, mb0), (ma1, mb1) in [models]:
        _assert_close(ma0.parameters(), ma1.parameters(), torch.float32)
        _assert_close(mb0.parameters(), mb1.parameters(), torch.float32)


# ---------------------------------------------------------------- .grad as views of the flat gradient buffer
def _gather_counter(monkeypatch, opts):
    """Count the gathers of ``opts``' fused layouts (the copies into their gradient views) and the non-finite checks
    that took a flat gradient buffer."""
    counts = {"gather": 0, "flat_check": 0}
    copy_, check = torch._foreach_copy_, samkit_ops.non_finite_check_and_unscale_

    def spy_copy(dst, src, *args, **kw):
        counts["gather"] += any(o._fused.layout is not None and dst is o._fused.layout.grad_views[0] for o in opts)
        return copy_(dst, src, *args, **kw)

    def spy_check(tensors, *args, **kw):
        flats = [f for o in opts if o._fused.layout is not None for f in o._fused.layout.flat_grads]
        counts["flat_check"] += len(tensors) == 1 and any(tensors[0] is f for f in flats)
        return check(tensors, *args, **kw)

    monkeypatch.setattr(torch, "_foreach_copy_", spy_copy)
    monkeypatch.setattr(samkit_ops, "non_finite_check_and_unscale_", spy_check)
    return counts


def _two_step(model, opt, x, y, set_to_none, scale=(1.0, 1.0)):
    for k in range(2):
        opt.zero_grad(set_to_none=set_to_none)
        (nn.functional.mse_loss(model(x), y) * scale[k]).backward()
        (opt.first_step if k == 0 else opt.second_step)()


def _views_of_flat(opt, params):
    storage = opt._fused.layout.flat_grads[0].untyped_storage().data_ptr()
    return all(p.grad is not None and p.grad.untyped_storage().data_ptr() == storage for p in params)


@pytest.mark.parametrize("set_to_none", [False, True])
def test_grads_stay_views_of_the_flat_buffer_without_set_to_none(monkeypatch, set_to_none):
    x, y = _data()
    models = [_model() for _ in range(2)]
    opts = [_build("sam", m, f) for m, f in zip(models, (False, True))]
    counts = _gather_counter(monkeypatch, opts[1:])
    steps = 4
    for _ in range(steps):
        for m, o in zip(models, opts):
            _two_step(m, o, x, y, set_to_none)
        _assert_close(models[0].parameters(), models[1].parameters(), torch.float64)
        # after the step the gradients are the flat buffer's views (set_to_none=False keeps them there)
        assert _views_of_flat(opts[1], list(models[1].parameters())) == (not set_to_none)
    if set_to_none:  # new gradients every pass: the gather every first step, the list check every second
        assert counts == {"gather": steps, "flat_check": 0}
    else:  # one gather (the first step); after it backward accumulates into the views
        assert counts == {"gather": 1, "flat_check": steps}


def test_first_step_repoints_grads_to_views_with_the_same_values():
    x, y = _data()
    model = _model()
    opt = _build("sam", model, True)
    nn.functional.mse_loss(model(x), y).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    opt.first_step()
    assert _views_of_flat(opt, list(model.parameters()))
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads))
    opt.zero_grad()  # torch's default set_to_none=True drops the views
    assert all(p.grad is None for p in model.parameters())


class _TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body, self.a, self.b = nn.Linear(6, 8), nn.Linear(8, 1), nn.Linear(8, 1)
        self.to(torch.float64)

    def forward(self, x, head):
        return (self.a if head == 0 else self.b)(torch.tanh(self.body(x)))


@pytest.mark.parametrize("set_to_none", [True, False])
def test_parameter_without_gradient_in_some_steps_behaves_as_foreach(set_to_none):
    x, y = _data()
    models = [_TwoHeads() for _ in range(2)]
    opts = [_build("sam", m, f) for m, f in zip(models, (False, True))]
    for step in range(6):
        head = 0 if step % 3 else 1  # head b has a gradient only in steps 0 and 3
        before = [m.b.weight.detach().clone() for m in models]
        for m, o in zip(models, opts):
            for k in range(2):
                o.zero_grad(set_to_none=set_to_none)
                nn.functional.mse_loss(m(x, head), y).backward()
                (o.first_step if k == 0 else o.second_step)()
        _assert_close(models[0].parameters(), models[1].parameters(), torch.float64)
        if set_to_none and head == 0:  # no gradient: the base optimizer skips it
            assert models[1].b.weight.grad is None
            assert all(torch.equal(m.b.weight, b) for m, b in zip(models, before))


@pytest.mark.parametrize("on_nonfinite", ["raise", "skip"])
def test_nonfinite_second_pass_gradient_in_the_views_same_decision(monkeypatch, on_nonfinite):
    x, y = _data()
    models = [_model() for _ in range(2)]
    opts = [_build("sam", m, f, on_nonfinite=on_nonfinite) for m, f in zip(models, (False, True))]
    counts = _gather_counter(monkeypatch, opts[1:])
    for m, o in zip(models, opts):
        for _ in range(2):
            _two_step(m, o, x, y, set_to_none=False)
    assert counts["flat_check"] == 2 and _views_of_flat(opts[1], list(models[1].parameters()))
    results = []
    for m, o in zip(models, opts):
        before = [p.detach().clone() for p in m.parameters()]
        if on_nonfinite == "raise":
            with pytest.raises(NonFiniteGradientError, match="second"):
                _two_step(m, o, x, y, set_to_none=False, scale=(1.0, float("nan")))
        else:
            _two_step(m, o, x, y, set_to_none=False, scale=(1.0, float("inf")))
        assert all(torch.equal(p, b) for p, b in zip(m.parameters(), before))  # restored, no base step
        results.append((o.steps, o.skipped_steps, o.is_perturbed))
    assert results[0] == results[1] == (2, int(on_nonfinite == "skip"), False)
    assert counts["flat_check"] == 3  # the check that found it took the flat buffer
    for m, o in zip(models, opts):  # and the next steps go on alike
        _two_step(m, o, x, y, set_to_none=False)
    _assert_close(models[0].parameters(), models[1].parameters(), torch.float64)


def test_some_grads_not_views_fall_back_to_the_gather(monkeypatch):
    x, y = _data()
    models = [_model() for _ in range(2)]
    opts = [_build("sam", m, f) for m, f in zip(models, (False, True))]
    counts = _gather_counter(monkeypatch, opts[1:])
    for m, o in zip(models, opts):
        _two_step(m, o, x, y, set_to_none=False)
        o.zero_grad(set_to_none=False)
        nn.functional.mse_loss(m(x), y).backward()
        last = list(m.parameters())[-1]
        last.grad = last.grad.clone() * 2.0  # one gradient replaced (not a view), another changed in place
        list(m.parameters())[0].grad.mul_(3.0)
        o.first_step()
        o.zero_grad(set_to_none=False)
        nn.functional.mse_loss(m(x), y).backward()
        o.second_step()
    assert counts["gather"] == 2
    _assert_close(models[0].parameters(), models[1].parameters(), torch.float64)
    assert _views_of_flat(opts[1], list(models[1].parameters()))
