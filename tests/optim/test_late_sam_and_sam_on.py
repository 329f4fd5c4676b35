"""Late SAM (``SAM(..., start=N)``) and SAM on a subset (``perturb=False`` groups, SAM-ON) against hand-written steps.

The references are written here in float64 with ``torch.func.functional_call`` and autograd: the gradient at a point
given as a dict of tensors, the rule ε = ρ g/‖g‖ and SGD with momentum written out, so nothing of the optimizer is
reused. Late SAM: the base step for the first N calls (bit for bit torch's SGD), then SAM from that same state. SAM on
a subset S: ε = ρ g_S/‖g_S‖ on S and 0 elsewhere; every parameter then takes the base step with its gradient at the
perturbed point (w_S + ε_S, w_rest); per-group ρ = 0 differs from it by exactly the norm (‖g‖ instead of ‖g_S‖).
"""

import copy

import pytest
import torch
from torch import nn
from torch.func import functional_call

from samkit import GSAM, SAM, USAM, sam_on_param_groups
from samkit.optim.schedule import last_call_was_sam, resolve_start, sam_due

RHO, LR, MOM = 0.2, 0.1, 0.9


def _net(seed=0):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(3, 5), nn.LayerNorm(5), nn.Tanh(), nn.Linear(5, 1)).double()
    with torch.no_grad():  # LayerNorm starts at (1, 0): move it so that its gradient is not special
        net[1].weight.add_(0.3 * torch.randn(5, dtype=torch.float64))
        net[1].bias.add_(0.3 * torch.randn(5, dtype=torch.float64))
    return net


def _data(n=24):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, generator=g, dtype=torch.float64), torch.randn(n, 1, generator=g, dtype=torch.float64)


def _point(net):
    return {k: v.detach().clone() for k, v in net.named_parameters()}


def _grad(net, point, x, y):
    """∇L at ``point`` (a dict name -> tensor), by autograd on a functional call: independent of the optimizer."""
    leaves = {k: v.clone().requires_grad_(True) for k, v in point.items()}
    loss = nn.functional.mse_loss(functional_call(net, leaves, (x,)), y)
    grads = torch.autograd.grad(loss, list(leaves.values()))
    return dict(zip(leaves, grads))


def _norm(d, keys=None):
    keys = list(d) if keys is None else keys
    return torch.sqrt(sum((d[k] ** 2).sum() for k in keys))


def _sgd_momentum(point, bufs, grad):
    """One step of SGD with momentum (dampening 0), written out: buf ← μ buf + g (buf = g at first), w ← w − η buf."""
    for k in point:
        bufs[k] = grad[k].clone() if k not in bufs else MOM * bufs[k] + grad[k]
        point[k] = point[k] - LR * bufs[k]


def _closure(net, opt, x, y, calls):
    def closure():
        calls.append(1)
        opt.zero_grad()
        loss = nn.functional.mse_loss(net(x), y)
        loss.backward()
        return loss

    return closure


def _params_equal(a, b):
    return all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


# ---------------------------------------------------------------------------------------------- late SAM
def test_late_sam_is_sgd_for_the_first_start_steps_then_sam_from_the_same_state():
    x, y = _data()
    net, ref = _net(), _net()
    opt = SAM(net.parameters(), torch.optim.SGD, rho=RHO, lr=LR, momentum=MOM, eps=0.0, start=2)
    sgd = torch.optim.SGD(ref.parameters(), lr=LR, momentum=MOM)
    calls = []
    for _ in range(2):
        opt.step(_closure(net, opt, x, y, calls))
        sgd.zero_grad()
        nn.functional.mse_loss(ref(x), y).backward()
        sgd.step()
        assert _params_equal(net, ref)  # the base step alone: torch's SGD bit for bit
        assert not last_call_was_sam(opt)
    assert len(calls) == 2 and opt.steps == 2  # one forward and backward per base step
    # from here SAM, by hand, from the state SGD reached (weights and momentum buffers)
    point = _point(ref)
    names = [k for k, _ in ref.named_parameters()]
    bufs = {k: sgd.state[p]["momentum_buffer"].clone() for k, p in zip(names, ref.parameters())}
    for _ in range(2):
        g = _grad(net, point, x, y)
        norm = _norm(g)
        gp = _grad(net, {k: point[k] + RHO * g[k] / norm for k in point}, x, y)
        _sgd_momentum(point, bufs, gp)
        opt.step(_closure(net, opt, x, y, calls))
        assert last_call_was_sam(opt)
        for k, p in net.named_parameters():
            torch.testing.assert_close(p.detach(), point[k], rtol=0, atol=1e-12)
    assert len(calls) == 2 + 2 * 2 and opt.steps == 4


def test_late_sam_and_interval_sam_combine_the_first_call_after_start_is_sam():
    x, y = _data()
    net = _net()
    opt = SAM(net.parameters(), torch.optim.SGD, rho=RHO, lr=LR, start=2, interval=2)
    per_call = []
    for _ in range(7):
        calls = []
        opt.step(_closure(net, opt, x, y, calls))
        per_call.append(len(calls))
    assert per_call == [1, 1, 2, 1, 2, 1, 2]  # base, base, then SAM every second call from call 3
    assert [sam_due(n, 2, 2) for n in range(1, 8)] == [c == 2 for c in per_call]
    assert [sam_due(n, 0, 1) for n in range(1, 5)] == [True] * 4  # the default: SAM at every call


def test_the_two_step_api_is_not_counted_and_always_perturbs():
    x, y = _data()
    net = _net()
    opt = SAM(net.parameters(), torch.optim.SGD, rho=RHO, lr=LR, start=5)
    w = _point(net)
    nn.functional.mse_loss(net(x), y).backward()
    opt.first_step(zero_grad=True)
    assert opt.is_perturbed and not torch.equal(net[0].weight.detach(), w["0.weight"])
    nn.functional.mse_loss(net(x), y).backward()
    opt.second_step(zero_grad=True)
    assert opt._calls == 0 and opt.steps == 1


@pytest.mark.parametrize("mode", ["full", "m-sharpness"])
def test_step_accumulated_takes_the_base_step_with_the_full_batch_gradient_before_start(mode):
    x, y = _data()
    net = _net()
    opt = SAM(net.parameters(), torch.optim.SGD, rho=RHO, lr=LR, eps=0.0, start=1)
    chunks = [(x[:8], y[:8]), (x[8:], y[8:])]
    point = _point(net)

    def loss_fn(b):
        return nn.functional.mse_loss(net(b[0]), b[1])

    g = _grad(net, point, x, y)  # the size-weighted mean of the micro-batch means: the full-batch gradient
    opt.step_accumulated(loss_fn, chunks, mode=mode)
    for k, p in net.named_parameters():
        torch.testing.assert_close(p.detach(), point[k] - LR * g[k], rtol=0, atol=1e-12)
    point = _point(net)
    g = _grad(net, point, x, y)
    opt.step_accumulated(loss_fn, chunks, mode="full")  # call 2: SAM on the full batch
    gp = _grad(net, {k: point[k] + RHO * g[k] / _norm(g) for k in point}, x, y)
    for k, p in net.named_parameters():
        torch.testing.assert_close(p.detach(), point[k] - LR * gp[k], rtol=0, atol=1e-12)
    assert opt._calls == 2 and opt.steps == 2


def test_late_sam_state_dict_round_trip_keeps_the_count_of_calls():
    x, y = _data()
    net = _net()
    kw = dict(rho=RHO, lr=LR, momentum=MOM, start=3, interval=2)
    opt = SAM(net.parameters(), torch.optim.SGD, **kw)
    for _ in range(2):
        opt.step(_closure(net, opt, x, y, []))
    state = copy.deepcopy(opt.state_dict())
    assert state["samkit"]["calls"] == 2
    twin = copy.deepcopy(net)
    opt2 = SAM(twin.parameters(), torch.optim.SGD, **kw)
    opt2.load_state_dict(state)
    assert opt2._calls == 2
    pattern, pattern2 = [], []
    for _ in range(4):
        calls, calls2 = [], []
        opt.step(_closure(net, opt, x, y, calls))
        opt2.step(_closure(twin, opt2, x, y, calls2))
        pattern.append(len(calls))
        pattern2.append(len(calls2))
    assert pattern == pattern2 == [1, 2, 1, 2]  # calls 3..6: base (3 <= start), SAM at 4, base, SAM at 6
    assert _params_equal(net, twin)  # the resumed run is the uninterrupted one, bit for bit
    # a state saved before the calls were counted: every step came from one call
    old = copy.deepcopy(state)
    del old["samkit"]["calls"]
    opt2.load_state_dict(old)
    assert opt2._calls == state["samkit"]["steps"] + state["samkit"]["skipped_steps"] == 2


def test_late_sam_with_fused_buffers_equals_the_list_path():
    x, y = _data()
    nets = [_net(), _net()]
    opts = [
        SAM(n.parameters(), torch.optim.SGD, rho=RHO, lr=LR, momentum=MOM, start=2, fused=f)
        for n, f in zip(nets, (False, True))
    ]
    for _ in range(5):
        for n, o in zip(nets, opts):
            o.step(_closure(n, o, x, y, []))
    for p, q in zip(*(n.parameters() for n in nets)):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    "start,message",
    [
        (-1, "start must be an integer >= 0 .*got -1"),
        (0.5, r"start must be an integer >= 0 .*resolve_start\(fraction, total_steps\).*got 0.5"),
        (2.0, "start must be an integer >= 0 .*got 2.0"),
        (True, "start must be an integer >= 0 .*got True"),
    ],
)
def test_bad_start_is_refused_with_its_value(start, message):
    with pytest.raises(ValueError, match=message):
        SAM(_net().parameters(), torch.optim.SGD, lr=LR, start=start)


def test_resolve_start_turns_a_fraction_into_steps_and_refuses_the_rest():
    assert resolve_start(0.5, 10) == 5 and resolve_start(0.99, 10) == 9 and resolve_start(7, None) == 7
    assert resolve_start(None, None) == 0 and resolve_start(0, 10) == 0 and resolve_start(1000.0, 3) == 1000
    for bad in (1.5, -0.5, float("nan"), float("inf"), True, "3"):
        with pytest.raises(ValueError, match="fraction in \\(0, 1\\) of the steps or a whole number"):
            resolve_start(bad, 100)
    with pytest.raises(ValueError, match=r"fraction \(0.5\) needs the total number of steps"):
        resolve_start(0.5, None)


# ---------------------------------------------------------------------------------------------- SAM on a subset
def _norm_keys(net):
    return [k for k, _ in net.named_parameters() if k.startswith("1.")]


def test_sam_on_param_groups_puts_exactly_the_normalization_affine_parameters_in_the_perturbed_group():
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3),
        nn.BatchNorm2d(4),
        nn.GroupNorm(2, 4),
        nn.Flatten(),
        nn.Linear(16, 8),
        nn.LayerNorm(8),
        nn.LayerNorm(8, elementwise_affine=False),
        nn.Linear(8, 1, bias=False),
    )
    on, off = sam_on_param_groups(net, lr=0.5)
    norm_params = [net[1].weight, net[1].bias, net[2].weight, net[2].bias, net[5].weight, net[5].bias]
    assert [id(p) for p in on["params"]] == [id(p) for p in norm_params]
    assert {id(p) for p in off["params"]} == {id(p) for p in net.parameters()} - {id(p) for p in norm_params}
    assert on.get("perturb", True) is True and off["perturb"] is False and on["lr"] == off["lr"] == 0.5
    frozen = nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2))
    frozen[1].weight.requires_grad_(False)
    assert len(sam_on_param_groups(frozen)[0]["params"]) == 1  # only trainable parameters
    only_norm = nn.LayerNorm(3)
    assert len(sam_on_param_groups(only_norm)) == 1  # nothing left for a perturb=False group


def test_sam_on_param_groups_puts_a_shared_parameter_in_once():
    ln = nn.LayerNorm(3)
    net = nn.Sequential(nn.Linear(3, 3), ln, nn.Linear(3, 3), ln)
    groups = sam_on_param_groups(net)
    every = [id(p) for g in groups for p in g["params"]]
    assert len(every) == len(set(every)) == len(list(net.parameters()))
    SAM(groups, torch.optim.SGD, lr=0.1)  # torch refuses a parameter in two groups: this builds


def test_a_model_without_normalization_layers_is_refused_by_name():
    with pytest.raises(ValueError, match="Sequential has no normalization layer with trainable affine parameters"):
        sam_on_param_groups(nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.LayerNorm(2, elementwise_affine=False)))


@pytest.mark.parametrize("foreach,fused", [(False, False), (True, False), (True, True)])
def test_sam_on_perturbs_the_subset_by_rho_g_s_over_its_own_norm_and_nothing_else(foreach, fused):
    x, y = _data()
    net = _net()
    opt = SAM(sam_on_param_groups(net), torch.optim.SGD, rho=RHO, lr=LR, eps=0.0, foreach=foreach, fused=fused)
    point, S = _point(net), _norm_keys(net)
    g = _grad(net, point, x, y)
    nn.functional.mse_loss(net(x), y).backward()
    opt.first_step(zero_grad=True)
    norm_s = _norm(g, S)
    assert float(opt.last_grad_norm) == pytest.approx(float(norm_s), rel=1e-12)  # the norm over S alone
    assert float(opt.last_perturbation_norm) == pytest.approx(RHO, rel=1e-12)
    for k, p in net.named_parameters():
        if k in S:
            torch.testing.assert_close(p.detach() - point[k], RHO * g[k] / norm_s, rtol=0, atol=1e-13)
        else:
            assert torch.equal(p.detach(), point[k])  # not perturbed, not even by rounding
    nn.functional.mse_loss(net(x), y).backward()
    opt.second_step(zero_grad=True)


def test_sam_on_differs_from_per_group_rho_zero_by_exactly_the_norm():
    x, y = _data()
    a, b = _net(), _net()
    point, S = _point(a), _norm_keys(a)
    on = SAM(sam_on_param_groups(a), torch.optim.SGD, rho=RHO, lr=LR, eps=0.0)
    groups = sam_on_param_groups(b)
    del groups[1]["perturb"]
    groups[1]["rho"] = 0.0  # the other parameters unperturbed, but still in ‖g‖
    zero = SAM(groups, torch.optim.SGD, rho=RHO, lr=LR, eps=0.0)
    for net, opt in ((a, on), (b, zero)):
        nn.functional.mse_loss(net(x), y).backward()
        opt.first_step(zero_grad=True)
    g = _grad(a, point, x, y)
    ratio = float(_norm(g) / _norm(g, S))
    assert ratio > 1.5  # the other parameters hold most of the gradient here: the two differ visibly
    assert float(zero.last_grad_norm) == pytest.approx(float(_norm(g)), rel=1e-12)
    for (k, p), q in zip(a.named_parameters(), b.parameters()):
        eps_on, eps_zero = p.detach() - point[k], q.detach() - point[k]
        if k in S:
            torch.testing.assert_close(eps_on, ratio * eps_zero, rtol=1e-10, atol=1e-15)  # ρ g_S/‖g_S‖ vs ρ g_S/‖g‖
        else:
            assert torch.equal(eps_on, torch.zeros_like(eps_on)) and torch.equal(eps_zero, eps_on)


def test_sam_on_step_by_hand_every_parameter_takes_the_base_step_at_the_perturbed_point():
    x, y = _data()
    net = _net()
    opt = SAM(sam_on_param_groups(net), torch.optim.SGD, rho=RHO, lr=LR, momentum=MOM, eps=0.0)
    point, S, bufs = _point(net), _norm_keys(net), {}
    for _ in range(3):
        g = _grad(net, point, x, y)
        norm_s = _norm(g, S)
        perturbed = {k: point[k] + RHO * g[k] / norm_s if k in S else point[k] for k in point}
        _sgd_momentum(point, bufs, _grad(net, perturbed, x, y))  # the gradient at (w_S + ε_S, w_rest), for all
        opt.step(_closure(net, opt, x, y, []))
        for k, p in net.named_parameters():
            torch.testing.assert_close(p.detach(), point[k], rtol=0, atol=1e-12)
    moved = _point(_net())
    assert all(not torch.equal(point[k], moved[k]) for k in point if k not in S)  # the rest did take steps


@pytest.mark.parametrize("cls", [SAM, USAM, GSAM])
def test_sam_on_state_dict_round_trip_keeps_the_groups_and_resumes_bit_identically(cls):
    x, y = _data()
    net = _net()
    opt = cls(sam_on_param_groups(net), torch.optim.SGD, rho=RHO, lr=LR, momentum=MOM)
    for _ in range(2):
        opt.step(_closure(net, opt, x, y, []))
    state = copy.deepcopy(opt.state_dict())
    assert [g["perturb"] for g in state["param_groups"]] == [True, False]
    twin = copy.deepcopy(net)
    opt2 = cls(sam_on_param_groups(twin), torch.optim.SGD, rho=RHO, lr=LR, momentum=MOM)
    opt2.load_state_dict(state)
    assert [g["perturb"] for g in opt2.param_groups] == [True, False]
    for _ in range(2):
        opt.step(_closure(net, opt, x, y, []))
        opt2.step(_closure(twin, opt2, x, y, []))
    assert _params_equal(net, twin)


def test_sam_on_with_asam_rescales_only_the_perturbed_group():
    x, y = _data()
    net = _net()
    groups = sam_on_param_groups(net)
    groups[0]["adaptive"] = True
    opt = SAM(groups, torch.optim.SGD, rho=RHO, lr=LR, eps=0.0)
    point, S = _point(net), _norm_keys(net)
    g = _grad(net, point, x, y)
    nn.functional.mse_loss(net(x), y).backward()
    opt.first_step()
    t = {k: point[k].abs() + 0.01 for k in S}
    c = RHO / torch.sqrt(sum(((t[k] * g[k]) ** 2).sum() for k in S))  # ASAM: ε = c T² g, c from ‖T g‖ over S
    for k, p in net.named_parameters():
        expected = c * t[k] ** 2 * g[k] if k in S else torch.zeros_like(point[k])
        torch.testing.assert_close(p.detach() - point[k], expected, rtol=0, atol=1e-13)
    opt.second_step()


def test_bad_perturb_options_are_refused_with_their_value():
    net = _net()
    with pytest.raises(TypeError, match="perturb must be True or False, got 'no'"):
        SAM([{"params": net.parameters(), "perturb": "no"}], torch.optim.SGD, lr=LR)
    with pytest.raises(ValueError, match="every parameter group has perturb=False"):
        SAM([{"params": net.parameters(), "perturb": False}], torch.optim.SGD, lr=LR)
    opt = SAM(sam_on_param_groups(net[1]), torch.optim.SGD, lr=LR)
    with pytest.raises(TypeError, match="perturb must be True or False, got 0"):
        opt.add_param_group({"params": net[0].parameters(), "perturb": 0})
    opt.add_param_group({"params": net[0].parameters(), "perturb": False})
    assert [g["perturb"] for g in opt.param_groups] == [True, False]


def test_sam_on_with_a_grad_scaler_and_with_accumulation_equals_the_plain_step():
    x, y = _data()
    nets = [_net(), _net(), _net()]
    opts = [SAM(sam_on_param_groups(n), torch.optim.SGD, rho=RHO, lr=LR, momentum=MOM) for n in nets]
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)

    def scaled_closure():
        opts[1].zero_grad()
        loss = nn.functional.mse_loss(nets[1](x), y)
        scaler.scale(loss).backward()
        return loss

    chunks = [(x[:10], y[:10]), (x[10:], y[10:])]
    for _ in range(3):
        opts[0].step(_closure(nets[0], opts[0], x, y, []))
        opts[1].step(scaled_closure, scaler=scaler)
        scaler.update()
        opts[2].step_accumulated(lambda b: nn.functional.mse_loss(nets[2](b[0]), b[1]), chunks)
    for other in nets[1:]:
        for p, q in zip(nets[0].parameters(), other.parameters()):
            torch.testing.assert_close(p, q, rtol=0, atol=1e-12)
