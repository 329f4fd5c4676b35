"""The simulator: batched ≡ one at a time, ≡ the samkit.SAM / samkit.USAM optimizer, divergence handling."""

import math

import pytest
import torch

import samkit
from samkit.core import perturb_batched
from samkit.dynamics import (
    MatrixSensing,
    Quadratic,
    ScalarFactorization,
    SingleNeuron,
    SmoothStronglyConvex,
    simulate,
)

F64 = torch.float64


def _optimizer_run(problem, method, eta, rho, x0, steps, lam=None):
    """Run the issue-2 optimizer (SGD base, lr=eta, eps=0) on ``problem`` through autograd of its loss."""
    w = torch.nn.Parameter(x0.clone().to(F64))
    if method == "sam":
        opt = samkit.SAM([w], torch.optim.SGD, rho=rho, lr=eta, eps=0.0)
    elif method == "usam":
        opt = samkit.USAM([w], torch.optim.SGD, rho=rho, lr=eta, eps=0.0)
    else:
        opt = samkit.SAM([w], torch.optim.SGD, rho=rho, lr=eta, eps=0.0, normalization="unified", lam=lam)

    def closure():
        opt.zero_grad()
        loss = problem.loss(w)
        loss.backward()
        return loss

    for _ in range(steps):
        opt.step(closure)
    return w.detach()


CASES = [
    (Quadratic([10.0, 3.0, 1.0], rotate=True, seed=0), torch.tensor([1.0, -0.5, 2.0]), 0.15, 0.2),
    (SmoothStronglyConvex([5.0, 1.0], c=0.5), torch.tensor([2.0, -1.0]), 0.2, 0.3),
    (SingleNeuron("logcosh"), torch.tensor([1.2, 3.1]), 0.1, 0.1),
    (SingleNeuron("sqrt"), torch.tensor([0.7, 2.0]), 0.2, 0.5),
    (ScalarFactorization(), torch.tensor([0.5, 2.0]), 0.05, 0.1),
]


@pytest.mark.parametrize("method", ["sam", "usam", "unified"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: type(c[0]).__name__)
def test_simulator_step_matches_optimizer(case, method):
    problem, x0, eta, rho = case
    lam = 0.3 if method == "unified" else None
    sim = simulate(problem, method, eta, rho, x0=x0, steps=5, lam=lam, record=())
    ref = _optimizer_run(problem, method, eta, rho, x0, 5, lam=lam)
    # same rule (samkit.core), closed-form vs autograd gradients: agree to rounding (1e-12 relative)
    torch.testing.assert_close(sim.final[0], ref, rtol=1e-12, atol=1e-13)


def test_simulator_step_matches_optimizer_matrix_sensing():
    p = MatrixSensing(d=5, r=2, seed=0)
    U0 = p.init(0.5, kind="random", seed=2)
    for method in ("sam", "usam"):
        sim = simulate(p, method, 0.05, 0.05, x0=U0, steps=3, record=())
        ref = _optimizer_run(p, method, 0.05, 0.05, U0, 3)
        torch.testing.assert_close(sim.final[0], ref, rtol=1e-11, atol=1e-13)


@pytest.mark.parametrize("method", ["gd", "sam", "usam", "unified"])
def test_batched_equals_one_at_a_time(method):
    q = Quadratic([20.0, 5.0, 1.0], rotate=True, seed=1)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(6, 3, generator=g, dtype=F64)
    eta = torch.tensor([0.01, 0.05, 0.08, 0.099, 0.102, 0.2], dtype=F64)  # the last ones diverge
    rho = torch.tensor([0.0, 0.1, 1.0, 0.01, 0.5, 2.0], dtype=F64)
    lam = 0.5 if method == "unified" else None
    kw = dict(steps=300, lam=lam, record_every=7, blowup=1e30)
    batched = simulate(q, method, eta, rho, x0=x0, **kw)
    for b in range(6):
        one = simulate(q, method, float(eta[b]), float(rho[b]), x0=x0[b], **kw)
        # same operations row by row: bitwise equality is expected; allow 1 ulp-ish for BLAS blocking
        torch.testing.assert_close(batched.final[b], one.final[0], rtol=1e-14, atol=0)
        assert batched.diverged_at[b] == one.diverged_at[0]
        for k in ("loss", "grad_norm", "path_length", "sharpness", "x"):
            torch.testing.assert_close(batched.series[k][:, b], one.series[k][:, 0], rtol=1e-13, atol=0)
    assert batched.diverged.any() and not batched.diverged.all()


def test_broadcasting_grid_and_result_fields():
    q = Quadratic([10.0, 1.0])
    E, R = torch.meshgrid(torch.tensor([0.05, 0.15]), torch.tensor([0.0, 0.1, 1.0]), indexing="ij")
    res = simulate(q, "usam", E, R, x0=torch.ones(2), steps=10, record_every=4)
    assert res.eta.tolist() == pytest.approx([0.05] * 3 + [0.15] * 3)
    assert res.rho.tolist() == pytest.approx([0.0, 0.1, 1.0] * 2)
    assert res.steps.tolist() == [0, 4, 8, 10]
    assert res.series["x"].shape == (4, 6, 2) and res.series["loss"].shape == (4, 6)
    assert res.final.shape == (6, 2) and res.diverged.dtype == torch.bool and res.diverged_at.dtype == torch.long
    torch.testing.assert_close(res.final_loss, q.loss(res.final))
    rows = res.to_rows()
    assert len(rows) == 4 * 6
    assert {"step", "config", "method", "eta", "rho", "loss", "grad_norm", "path_length", "x0", "x1"} <= set(rows[0])
    assert len(res.to_rows(every=2)) == 3 * 6  # recorded indices 0, 2 and the last one, 3
    # x0 batch broadcasts with eta
    r2 = simulate(q, "gd", [0.1, 0.2], x0=torch.ones(2, 2), steps=1, record=())
    assert r2.final.shape == (2, 2)
    with pytest.raises(ValueError, match="broadcast"):
        simulate(q, "gd", [0.1, 0.2, 0.3], x0=torch.ones(2, 2), steps=1)
    with pytest.raises(ValueError, match="method"):
        simulate(q, "adam", 0.1)
    with pytest.raises(ValueError):
        simulate(q, "unified", 0.1, 0.1)  # needs lam
    with pytest.raises(ValueError, match="record"):
        simulate(q, "gd", 0.1, record=("bogus",))


def test_divergence_is_frozen_and_recorded():
    q = Quadratic([10.0, 1.0])
    res = simulate(q, "gd", [0.1, 0.3], x0=torch.ones(2), steps=200, blowup=1e10)
    # |1 - 0.3·10| = 2 per step from 1: the norm passes 1e10 at step ceil(log2(1e10)) = 34
    assert res.diverged.tolist() == [False, True]
    assert res.diverged_at.tolist() == [-1, 34]
    frozen = res.final[1]
    assert torch.isfinite(frozen).all() and frozen.norm() <= 1e10 and frozen.norm() > 1e10 / 2.01
    x = res.series["x"][:, 1]
    # step 34's iterate left the range: the run stays at step 33's iterate (its last finite one)
    assert torch.equal(x[33], x[-1]) and not torch.equal(x[32], x[33])
    torch.testing.assert_close(x[33, 0], torch.tensor(-(2.0**33), dtype=F64))
    # path length stops growing once frozen
    assert res.series["path_length"][-1, 1] == res.series["path_length"][33, 1]
    # non-finite iterates are caught too (overflow to inf in one step)
    res2 = simulate(ScalarFactorization(), "usam", 0.1, 10.0, x0=torch.tensor([1e60, 1e60], dtype=F64), steps=3)
    assert res2.diverged_at.tolist() == [1] and torch.equal(res2.final[0], torch.tensor([1e60, 1e60], dtype=F64))


def test_zero_gradient_is_a_fixed_point_and_gd_ignores_rho():
    sn = SingleNeuron()
    for m in ("sam", "usam", "unified"):
        res = simulate(sn, m, 0.1, 0.5, x0=torch.tensor([0.0, 2.0]), steps=10, lam=0.5 if m == "unified" else None)
        assert torch.equal(res.final[0], torch.tensor([0.0, 2.0], dtype=F64))
    a = simulate(sn, "gd", 0.1, 0.7, x0=torch.tensor([1.2, 3.1]), steps=20, record=())
    b = simulate(sn, "gd", 0.1, 0.0, x0=torch.tensor([1.2, 3.1]), steps=20, record=())
    assert torch.equal(a.final, b.final)


def test_unified_endpoints_are_usam_and_sam():
    q = Quadratic([4.0, 1.0], rotate=True, seed=5)
    x0 = torch.tensor([1.0, -2.0])
    for lam, m in ((0.0, "usam"), (1.0, "sam")):
        u = simulate(q, "unified", 0.2, 0.3, x0=x0, steps=50, lam=lam, record=())
        ref = simulate(q, m, 0.2, 0.3, x0=x0, steps=50, record=())
        torch.testing.assert_close(u.final, ref.final, rtol=1e-13, atol=1e-15)


def test_perturbation_is_scale_safe_and_eps_stalls_drift():
    # subnormal gradients: ρ g/‖g‖ is still the unit direction (core's ρ/‖g‖ would overflow to inf)
    g = torch.tensor([[3e-320, -4e-320]], dtype=F64)
    e = perturb_batched(g, torch.tensor([2.0], dtype=F64), lam=1.0, eps=0.0)
    torch.testing.assert_close(e, torch.tensor([[1.2, -1.6]], dtype=F64))
    # SAM on ½(xy)² reaches gradients far below 1e-160 without a spurious divergence (paper-notes 7.2)
    res = simulate(ScalarFactorization(), "sam", 0.05, 1.0, x0=torch.tensor([1.0, 3.0]), steps=3000, record=())
    assert not res.diverged.any() and res.final.norm() < 1e-50
    # an eps added to ‖g‖ stalls SAM's drift down the single-neuron manifold; exact normalization does not
    sn, x0 = SingleNeuron(), torch.tensor([1.2, 3.1])
    exact = simulate(sn, "sam", 0.1, 0.1, x0=x0, steps=6000, record=())
    stalled = simulate(sn, "sam", 0.1, 0.1, x0=x0, steps=6000, eps=1e-3, record=())
    assert exact.final[0, 1] ** 2 < 1e-4
    assert stalled.final[0, 1] ** 2 > 10 * exact.final[0, 1] ** 2


def test_sharpness_recording_matrix_sensing_and_path_length():
    p = MatrixSensing(d=6, r=2, seed=0, power_iters=100)
    U0 = p.init(0.3, kind="random", seed=1, batch=2)
    res = simulate(p, "sam", 0.05, [0.01, 0.1], x0=U0, steps=6, record_every=3)
    assert res.series["sharpness"].shape == (3, 2)
    torch.testing.assert_close(res.series["sharpness"][-1], p.sharpness(res.final), rtol=1e-6, atol=1e-9)
    # path length = Σ‖x_{t+1} − x_t‖ ≥ ‖x_T − x_0‖ (triangle inequality), equal for one step
    one = simulate(p, "gd", 0.05, x0=U0, steps=1, record=("path_length",))
    torch.testing.assert_close(one.series["path_length"][-1], (one.final - U0).flatten(1).norm(dim=1))
    assert (res.series["path_length"][-1] >= (res.final - U0).flatten(1).norm(dim=1) - 1e-12).all()
    assert math.isfinite(res.final_loss.sum().item())
