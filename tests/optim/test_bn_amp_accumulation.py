"""SAM in real training loops: BatchNorm, mixed precision, gradient accumulation / m-sharpness, compile, variants."""

import copy

import pytest
import torch
from torch import nn

from samkit import GSAM, SAM, USAM


def _bn_model(momentum):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8, momentum=momentum), nn.ReLU(), nn.Linear(8, 1))


def _bn_buffers(model):
    bn = model[1]
    return [bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone()]


# ---------------------------------------------------------------- BatchNorm


@pytest.mark.parametrize("momentum", [0.1, None])
def test_bn_statistics_are_those_of_one_plain_forward(momentum, mse_closure):
    torch.manual_seed(1)
    batches = [(torch.randn(16, 4), torch.randn(16, 1)) for _ in range(4)]
    model = _bn_model(momentum)
    plain = copy.deepcopy(model)
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.5, lr=0.0, model=model)
    for x, y in batches:
        opt.step(mse_closure(model, opt, x, y))
        plain(x)  # one plain forward of the same batch, same weights (lr = 0)
    for a, b in zip(_bn_buffers(model), _bn_buffers(plain)):
        assert torch.equal(a, b)


def test_without_model_the_second_pass_moves_bn_statistics(mse_closure):
    # the check above can fail: without model= the second forward updates the statistics again
    torch.manual_seed(1)
    x, y = torch.randn(16, 4), torch.randn(16, 1)
    model = _bn_model(None)
    plain = copy.deepcopy(model)
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.5, lr=0.0)
    opt.step(mse_closure(model, opt, x, y))
    plain(x)
    assert _bn_buffers(model)[2].item() == 2 and _bn_buffers(plain)[2].item() == 1


def test_bn_statistics_kept_with_the_two_step_api():
    torch.manual_seed(1)
    x, y = torch.randn(16, 4), torch.randn(16, 1)
    model = _bn_model(0.1)
    plain = copy.deepcopy(model)
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.5, lr=0.0, model=model)
    with opt.first_pass():
        nn.functional.mse_loss(model(x), y).backward()
    opt.first_step(zero_grad=True)
    nn.functional.mse_loss(model(x), y).backward()
    opt.second_step()
    plain(x)
    for a, b in zip(_bn_buffers(model), _bn_buffers(plain)):
        assert torch.equal(a, b)


def test_a_skipped_step_keeps_the_bn_statistics_of_its_own_first_pass(mse_closure):
    # a step skipped for a non-finite first-pass gradient restores nothing: its first forward's update stays
    # (a stale snapshot of the step before must not be put back)
    torch.manual_seed(1)
    (x1, y1), (x2, y2) = [(torch.randn(16, 4), torch.randn(16, 1)) for _ in range(2)]
    model = _bn_model(0.1)
    plain = copy.deepcopy(model)
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.5, lr=0.0, model=model, on_nonfinite="skip")
    opt.step(mse_closure(model, opt, x1, y1))
    plain(x1)

    def bad_first_pass():
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x2), y2) * float("nan")
        loss.backward()
        return loss

    opt.step(bad_first_pass)
    plain(x2)
    assert opt.skipped_steps == 1 and opt.steps == 1
    for a, b in zip(_bn_buffers(model), _bn_buffers(plain)):
        assert torch.equal(a, b)


# ---------------------------------------------------------------- mixed precision


def test_bfloat16_autocast_trains_without_a_scaler():
    torch.manual_seed(0)
    x = torch.randn(128, 6)
    y = (x[:, :1] - x[:, 1:2]).tanh()
    model = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 1))
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9)

    def closure():
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
            assert out.dtype == torch.bfloat16
            loss = nn.functional.mse_loss(out.float(), y)
        loss.backward()
        return loss

    first = opt.step(closure).item()
    for _ in range(60):
        last = opt.step(closure).item()
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in model.parameters())
    assert last < 0.3 * first


def _scaler(scale=2.0**16):
    return torch.amp.GradScaler("cpu", init_scale=scale)


@pytest.mark.parametrize("cls", [USAM, SAM])
def test_perturbation_with_a_scaler_equals_the_one_without(cls):
    torch.manual_seed(0)
    x, y = torch.randn(32, 6), torch.randn(32, 1)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 1))
    eps = []
    for scaler in (None, _scaler()):
        m = copy.deepcopy(model)
        opt = cls(m.parameters(), torch.optim.SGD, rho=0.3, lr=0.1)
        loss = nn.functional.mse_loss(m(x), y)
        (scaler.scale(loss) if scaler else loss).backward()
        before = [p.detach().clone() for p in m.parameters()]
        opt.first_step(scaler=scaler)
        eps.append([p.detach() - b for p, b in zip(m.parameters(), before)])
        nn.functional.mse_loss(m(x), y).backward()
        opt.second_step(scaler=scaler)
    for a, b in zip(*eps):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    # the unscaled USAM step moves by rho * g, not rho * S * g
    assert max(e.abs().max().item() for e in eps[1]) < 10.0


def _scaled_run(bad_pass):
    torch.manual_seed(0)
    x, y = torch.randn(32, 6), torch.randn(32, 1)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 1))
    opt = USAM(model.parameters(), torch.optim.SGD, rho=0.1, lr=0.1, momentum=0.9)
    scaler = _scaler()
    calls = []

    def closure():
        opt.zero_grad()
        calls.append(1)
        loss = nn.functional.mse_loss(model(x), y)
        if bad_pass is not None and len(calls) == {"first": 3, "second": 4}[bad_pass]:
            loss = loss * float("inf")
        scaler.scale(loss).backward()
        return loss

    opt.step(closure, scaler=scaler)  # one good step (2 closure calls) creates momentum state
    scaler.update()
    params = [p.detach().clone() for p in model.parameters()]
    state = copy.deepcopy(opt.base_optimizer.state_dict()["state"])
    scale = scaler.get_scale()
    opt.step(closure, scaler=scaler)
    scaler.update()
    return model, opt, scaler, params, state, scale


@pytest.mark.parametrize("bad_pass", ["first", "second"])
def test_overflow_in_either_pass_skips_the_step_and_lowers_the_scale(bad_pass):
    model, opt, scaler, params, state, scale = _scaled_run(bad_pass)
    for p, q in zip(model.parameters(), params):
        assert torch.equal(p.detach(), q)
    after = opt.base_optimizer.state_dict()["state"]
    for k in state:
        assert torch.equal(state[k]["momentum_buffer"], after[k]["momentum_buffer"])
    assert scaler.get_scale() == scale / 2
    assert opt.skipped_steps == 1 and opt.steps == 1


def test_no_overflow_takes_the_step():
    model, opt, scaler, params, _, scale = _scaled_run(None)
    assert any(not torch.equal(p.detach(), q) for p, q in zip(model.parameters(), params))
    assert opt.steps == 2 and opt.skipped_steps == 0 and scaler.get_scale() == scale


# ---------------------------------------------------------------- accumulation and m-sharpness


def _acc_setup(seed=0):
    torch.manual_seed(seed)
    x, y = torch.randn(24, 5, dtype=torch.float64), torch.randn(24, 1, dtype=torch.float64)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 1)).double()
    return x, y, model


def _loss_fn(model):
    return lambda b: nn.functional.mse_loss(model(b[0]), b[1])


def test_accumulated_full_mode_equals_sam_on_the_full_batch(mse_closure):
    x, y, model = _acc_setup()
    ref = copy.deepcopy(model)
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.2, lr=0.1, momentum=0.9)
    ref_opt = SAM(ref.parameters(), torch.optim.SGD, rho=0.2, lr=0.1, momentum=0.9)
    chunks = [(x[:8], y[:8]), (x[8:20], y[8:20]), (x[20:], y[20:])]  # unequal sizes
    for _ in range(3):
        loss = opt.step_accumulated(_loss_fn(model), chunks, mode="full")
        ref_loss = ref_opt.step(mse_closure(ref, ref_opt, x, y))
        torch.testing.assert_close(loss, ref_loss.detach(), rtol=1e-12, atol=0)
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)


def test_m_sharpness_with_m_equal_batch_is_plain_sam_and_per_chunk_otherwise(mse_closure):
    x, y, model = _acc_setup(1)
    one = copy.deepcopy(model)
    ref = copy.deepcopy(model)
    opt_one = SAM(one.parameters(), torch.optim.SGD, rho=0.2, lr=0.1)
    ref_opt = SAM(ref.parameters(), torch.optim.SGD, rho=0.2, lr=0.1)
    opt_one.step_accumulated(_loss_fn(one), [(x, y)], mode="m-sharpness")
    ref_opt.step(mse_closure(ref, ref_opt, x, y))
    for p, q in zip(one.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)

    # two chunks: the descent gradient is the mean of per-chunk SAM gradients, each with its own epsilon
    two = copy.deepcopy(model)
    opt_two = SAM(two.parameters(), torch.optim.SGD, rho=0.2, lr=0.1)
    chunks = [(x[:12], y[:12]), (x[12:], y[12:])]
    opt_two.step_accumulated(_loss_fn(two), chunks, mode="m-sharpness")
    w0 = [p.detach().clone() for p in model.parameters()]
    total = [torch.zeros_like(p) for p in w0]
    for cx, cy in chunks:
        m = copy.deepcopy(model)
        g = torch.autograd.grad(nn.functional.mse_loss(m(cx), cy), list(m.parameters()))
        n = torch.sqrt(sum((gi * gi).sum() for gi in g))
        with torch.no_grad():
            for p, gi in zip(m.parameters(), g):
                p.add_(0.2 * gi / n)
        gp = torch.autograd.grad(nn.functional.mse_loss(m(cx), cy), list(m.parameters()))
        total = [t + 0.5 * gi for t, gi in zip(total, gp)]
    for p, w, t in zip(two.parameters(), w0, total):
        torch.testing.assert_close(p.detach(), w - 0.1 * t, rtol=1e-12, atol=1e-14)
    # and it differs from full-batch SAM (the check can fail)
    assert any(not torch.allclose(p, q) for p, q in zip(two.parameters(), ref.parameters()))


def test_step_accumulated_bad_input():
    x, y, model = _acc_setup()
    opt = SAM(model.parameters(), torch.optim.SGD, lr=0.1)
    with pytest.raises(ValueError, match="mode must be"):
        opt.step_accumulated(_loss_fn(model), [(x, y)], mode="mean")
    with pytest.raises(ValueError, match="micro_batches is empty"):
        opt.step_accumulated(_loss_fn(model), [])
    with pytest.raises(ValueError, match="scalar loss"):
        opt.step_accumulated(lambda b: (model(b[0]) - b[1]) ** 2, [(x, y)])
    assert not opt.is_perturbed
    # micro-batches without a tensor have no size to weight them by: the error says to pass weights=
    index = [slice(0, 8), slice(8, None)]
    with pytest.raises(ValueError, match=r"cannot tell the batch size of slice.*pass weights="):
        opt.step_accumulated(lambda s: nn.functional.mse_loss(model(x[s]), y[s]), index)
    assert not opt.is_perturbed


def test_step_accumulated_with_explicit_weights_equals_the_default_sizes():
    x, y, model = _acc_setup(2)
    other = copy.deepcopy(model)
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.2, lr=0.1)
    opt_other = SAM(other.parameters(), torch.optim.SGD, rho=0.2, lr=0.1)
    opt.step_accumulated(_loss_fn(model), [(x[:8], y[:8]), (x[8:], y[8:])])
    n = x.shape[0]
    opt_other.step_accumulated(
        lambda s: nn.functional.mse_loss(other(x[s]), y[s]), [slice(0, 8), slice(8, None)], weights=[8, n - 8]
    )
    for p, q in zip(model.parameters(), other.parameters()):
        assert torch.equal(p, q)
    assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), _acc_setup(2)[2].parameters()))


# ---------------------------------------------------------------- torch.compile


def test_compiled_model_trains_to_the_same_parameters_as_eager(mse_closure):
    torch.manual_seed(0)
    x, y = torch.randn(32, 6), torch.randn(32, 1)
    base = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 1))
    results = []
    for compiled in (False, True):
        model = copy.deepcopy(base)
        fwd = torch.compile(model, backend="aot_eager") if compiled else model
        opt = SAM(model.parameters(), torch.optim.SGD, rho=0.1, lr=0.1, momentum=0.9)
        closure = mse_closure(fwd, opt, x, y)

        for _ in range(5):
            opt.step(closure)
        results.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- variants


def _quadratic():
    g = torch.Generator().manual_seed(5)
    q, _ = torch.linalg.qr(torch.randn(4, 4, generator=g, dtype=torch.float64))
    A = q @ torch.diag(torch.tensor([0.5, 1.0, 2.0, 4.0], dtype=torch.float64)) @ q.T
    return A, torch.randn(4, generator=g, dtype=torch.float64)


def test_gsam_update_equals_the_formula():
    A, w0 = _quadratic()
    w = nn.Parameter(w0.clone())
    opt = GSAM([w], torch.optim.SGD, rho=0.3, alpha=0.4, lr=0.1, eps=0.0)

    def closure():
        opt.zero_grad()
        loss = 0.5 * w @ A @ w
        loss.backward()
        return loss

    opt.step(closure)
    g = A @ w0
    gp = A @ (w0 + 0.3 * g / g.norm())
    g_perp = g - (g @ gp) / (gp @ gp) * gp
    expected = w0 - 0.1 * (gp - 0.4 * g_perp)
    assert (w.detach() - expected).abs().max() < 1e-12
    # alpha = 0 is SAM
    w2 = nn.Parameter(w0.clone())
    opt2 = GSAM([w2], torch.optim.SGD, rho=0.3, alpha=0.0, lr=0.1, eps=0.0)
    (0.5 * w2 @ A @ w2).backward()
    opt2.first_step(zero_grad=True)
    (0.5 * w2 @ A @ w2).backward()
    opt2.second_step()
    assert (w2.detach() - (w0 - 0.1 * gp)).abs().max() < 1e-12
    with pytest.raises(ValueError, match="alpha"):
        GSAM([w], torch.optim.SGD, alpha=-1.0, lr=0.1)


def test_interval_sam_alternates_sam_and_base_steps():
    A, w0 = _quadratic()
    w = nn.Parameter(w0.clone())
    opt = SAM([w], torch.optim.SGD, rho=0.3, lr=0.1, eps=0.0, interval=3)
    calls = []

    def closure():
        calls.append(1)
        opt.zero_grad()
        loss = 0.5 * w @ A @ w
        loss.backward()
        return loss

    expected = w0.clone()
    for t in range(6):
        opt.step(closure)
        g = A @ expected
        if t % 3 == 0:
            expected = expected - 0.1 * (A @ (expected + 0.3 * g / g.norm()))
        else:
            expected = expected - 0.1 * g
    assert (w.detach() - expected).abs().max() < 1e-12
    assert len(calls) == 2 + 1 + 1 + 2 + 1 + 1
    assert opt.steps == 6
    with pytest.raises(ValueError, match="interval must be an integer >= 1"):
        SAM([w], torch.optim.SGD, lr=0.1, interval=0)


def test_bad_training_options():
    m = nn.Linear(2, 1)
    with pytest.raises(ValueError, match="perturbation must be 'local' or 'global'"):
        SAM(m.parameters(), torch.optim.SGD, lr=0.1, perturbation="ring")
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        SAM(m.parameters(), torch.optim.SGD, lr=0.1, model="net")
