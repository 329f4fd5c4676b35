"""bfloat16 without a scaler (issue 20, item 4): autocast around the forward of both passes, and bfloat16 weights.

Under autocast the weights and their gradients stay float32, so the rule is checked exactly on the gradients the
closure produced (ε = ρ g/‖g‖ to float32 rounding) and the whole step against the float32 step within a bfloat16
tolerance. With bfloat16 weights (``model.to(torch.bfloat16)``) the norm is accumulated in float32 and scale-safely
(gradients whose squares leave float32's range), w + ε is the bfloat16 rounding of the float32 value, the restore is
bit-exact and a tiny model trains. Every test runs on the CPU; on a CUDA machine the ``cuda`` cases run too.
"""

import copy

import pytest
import torch
from torch import nn

from samkit import SAM, USAM

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]
#: (foreach, fused): the single-tensor loop, the multi-tensor kernels, the flat buffers
PATHS = [(False, False), (True, False), (True, True)]


def _net(device, dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 1)).to(device=device, dtype=dtype)


def _data(device, dtype=torch.float32):
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(32, 6, generator=g), torch.randn(32, 1, generator=g)
    return x.to(device, dtype), y.to(device, dtype)


def _autocast_loss(model, x, y, device):
    with torch.autocast(device, dtype=torch.bfloat16):
        out = model(x)
    assert out.dtype == torch.bfloat16  # autocast really ran the forward in bfloat16
    return nn.functional.mse_loss(out.float(), y.float())


def _norm64(tensors):
    return torch.sqrt(sum((t.double() ** 2).sum() for t in tensors))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("foreach,fused", PATHS)
def test_autocast_first_step_is_the_rule_on_the_closures_float32_gradients(device, foreach, fused):
    model, (x, y) = _net(device), _data(device)
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.1, lr=0.1, foreach=foreach, fused=fused)
    _autocast_loss(model, x, y, device).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    assert all(g.dtype == torch.float32 for g in grads)  # autocast leaves float32 weights float32 gradients
    before = [p.detach().clone() for p in model.parameters()]
    opt.first_step()
    norm = _norm64(grads)
    assert opt.last_grad_norm.dtype == torch.float32
    assert float(opt.last_grad_norm) == pytest.approx(float(norm), rel=1e-6)
    for p, w, g in zip(model.parameters(), before, grads):
        expected = w.double() + 0.1 * g.double() / norm  # ε = ρ g/‖g‖ from the closure's own gradients
        torch.testing.assert_close(p.detach().double(), expected, rtol=1e-6, atol=1e-6)
    opt.zero_grad()
    _autocast_loss(model, x, y, device).backward()
    opt.param_groups[0]["lr"] = 0.0  # so that second_step's result is the restore alone
    opt.second_step()
    assert all(torch.equal(p.detach(), w) for p, w in zip(model.parameters(), before))  # restored bit for bit


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cls", [SAM, USAM])
def test_autocast_sam_step_equals_the_float32_step_within_bfloat16_tolerance(device, cls):
    x, y = _data(device)
    steps = {}
    for precision in ("fp32", "bf16"):
        model = _net(device)
        opt = cls(model.parameters(), torch.optim.SGD, rho=0.1, lr=0.2, momentum=0.9)
        start = [p.detach().clone() for p in model.parameters()]

        def closure():
            opt.zero_grad()
            if precision == "bf16":
                loss = _autocast_loss(model, x, y, device)
            else:
                loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            return loss

        for _ in range(3):
            opt.step(closure)  # no scaler: bfloat16 has float32's exponent range
        steps[precision] = [p.detach() - w for p, w in zip(model.parameters(), start)]
        assert opt.steps == 3 and opt.skipped_steps == 0
    moved = _norm64(steps["fp32"])
    diff = _norm64([a - b for a, b in zip(steps["bf16"], steps["fp32"])])
    assert float(moved) > 1e-2
    assert float(diff) < 2e-2 * float(moved)  # bfloat16's 8-bit mantissa: a few parts in a thousand per pass
    assert float(diff) > 0  # and autocast did change the numbers


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("foreach,fused", PATHS)
def test_bfloat16_weights_norm_in_float32_perturbation_rounded_restore_exact(device, foreach, fused):
    model, (x, y) = _net(device, torch.bfloat16), _data(device, torch.bfloat16)
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.0, foreach=foreach, fused=fused)
    nn.functional.mse_loss(model(x).float(), y.float()).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    assert all(g.dtype == torch.bfloat16 for g in grads)
    before = [p.detach().clone() for p in model.parameters()]
    opt.first_step(zero_grad=True)
    norm = _norm64(grads)
    assert opt.last_grad_norm.dtype == torch.float32  # accumulated in float32, not in bfloat16
    assert float(opt.last_grad_norm) == pytest.approx(float(norm), rel=1e-6)
    for p, w, g in zip(model.parameters(), before, grads):
        assert p.dtype == torch.bfloat16
        exact = w.double() + 0.05 * g.double() / norm
        # w + ε is the bfloat16 rounding of the exact value: within half a bfloat16 ulp (2^-8 relative), plus c·g's
        torch.testing.assert_close(p.detach().double(), exact, rtol=2**-8, atol=1e-30)
    nn.functional.mse_loss(model(x).float(), y.float()).backward()
    opt.second_step()
    assert all(torch.equal(p.detach(), w) for p, w in zip(model.parameters(), before))  # lr = 0: the restore alone


@pytest.mark.parametrize("scale", [1e25, 1e-25])
@pytest.mark.parametrize("foreach,fused", PATHS)
def test_bfloat16_gradients_whose_squares_leave_float32_range_get_the_right_norm(scale, foreach, fused):
    w = nn.Parameter(torch.ones(4, dtype=torch.bfloat16))
    opt = SAM([w], torch.optim.SGD, rho=0.5, lr=0.0, eps=0.0, foreach=foreach, fused=fused)
    g = torch.tensor([3.0, 0.0, 4.0, 0.0]) * scale  # (1e25)² overflows float32, (1e-25)² underflows it
    w.grad = g.to(torch.bfloat16)
    opt.first_step()
    expected = float(_norm64([w.grad]))
    assert float(opt.last_grad_norm) == pytest.approx(expected, rel=1e-6)
    assert float(opt.last_perturbation_norm) == pytest.approx(0.5, rel=1e-6)  # ‖ε‖ = ρ, not 0 and not NaN
    torch.testing.assert_close(w.detach().float(), torch.tensor([1.3, 1.0, 1.4, 1.0]), rtol=2**-8, atol=0)
    opt.second_step()
    assert torch.equal(w.detach(), torch.ones(4, dtype=torch.bfloat16))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("foreach,fused", PATHS)
def test_bfloat16_weights_train_a_tiny_model_without_a_scaler(device, foreach, fused):
    model, (x, y) = _net(device, torch.bfloat16), _data(device, torch.bfloat16)
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9, foreach=foreach, fused=fused)

    def closure():
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x).float(), y.float())
        loss.backward()
        return loss

    losses = [float(opt.step(closure).detach()) for _ in range(30)]
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    assert opt.steps == 30 and opt.skipped_steps == 0
    assert losses[-1] < 0.8 * losses[0]  # measured: 1.16 -> 0.62 (CPU)


@pytest.mark.parametrize("device", DEVICES)
def test_two_step_api_under_autocast_equals_step_with_a_closure(device):
    x, y = _data(device)
    a, b = _net(device), _net(device)
    opt_a = SAM(a.parameters(), torch.optim.SGD, rho=0.1, lr=0.1, momentum=0.9)
    opt_b = SAM(b.parameters(), torch.optim.SGD, rho=0.1, lr=0.1, momentum=0.9)

    def closure():
        opt_a.zero_grad()
        loss = _autocast_loss(a, x, y, device)
        loss.backward()
        return loss

    for _ in range(2):
        opt_a.step(closure)
        _autocast_loss(b, x, y, device).backward()
        opt_b.first_step(zero_grad=True)
        _autocast_loss(b, x, y, device).backward()
        opt_b.second_step(zero_grad=True)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_bfloat16_state_dict_round_trip_resumes_bit_identically():
    x, y = _data("cpu", torch.bfloat16)
    model = _net("cpu", torch.bfloat16)
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9)

    def closure_of(m, o):
        def closure():
            o.zero_grad()
            loss = nn.functional.mse_loss(m(x).float(), y.float())
            loss.backward()
            return loss

        return closure

    for _ in range(2):
        opt.step(closure_of(model, opt))
    twin = copy.deepcopy(model)
    opt2 = SAM(twin.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9)
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))
    for _ in range(2):
        opt.step(closure_of(model, opt))
        opt2.step(closure_of(twin, opt2))
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), twin.parameters()))
