"""The perturbation rule of samkit.core: formulas, scale safety, zero gradients, input checks."""

import math

import pytest
import torch

from samkit.core import (
    batched_norm,
    check_rho,
    global_norm,
    perturbation,
    perturbation_scale,
    resolve_lam,
)


def _grads(dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randn(3, 4, generator=g, dtype=dtype),
        torch.randn(5, generator=g, dtype=dtype),
        torch.randn(2, 2, 2, generator=g, dtype=dtype),
    ]


def _flat(ts):
    return torch.cat([t.reshape(-1) for t in ts])


@pytest.mark.parametrize("foreach", [True, False])
def test_sam_perturbation_is_rho_times_unit_gradient(foreach):
    grads = _grads()
    eps = perturbation(grads, 0.3, eps=0.0, foreach=foreach)
    flat = _flat(grads)
    expected = 0.3 * flat / flat.norm()
    torch.testing.assert_close(_flat(eps), expected, rtol=1e-14, atol=0)
    assert abs(_flat(eps).norm().item() - 0.3) < 1e-14


@pytest.mark.parametrize("foreach", [True, False])
def test_usam_perturbation_is_rho_times_gradient(foreach):
    grads = _grads()
    eps = perturbation(grads, 0.3, normalization="none", foreach=foreach)
    torch.testing.assert_close(_flat(eps), 0.3 * _flat(grads), rtol=0, atol=0)


def test_unified_interpolates_and_hits_both_ends():
    grads = _grads()
    flat = _flat(grads)
    n = flat.norm()
    for lam in (0.0, 0.25, 1.0):
        e = _flat(perturbation(grads, 0.2, normalization="unified", lam=lam, eps=0.0))
        torch.testing.assert_close(e, 0.2 * ((1 - lam) * flat + lam * flat / n), rtol=1e-13, atol=0)
    torch.testing.assert_close(
        _flat(perturbation(grads, 0.2, normalization="unified", lam=0.0)),
        _flat(perturbation(grads, 0.2, normalization="none")),
    )
    torch.testing.assert_close(
        _flat(perturbation(grads, 0.2, normalization="unified", lam=1.0, eps=0.0)),
        _flat(perturbation(grads, 0.2, eps=0.0)),
    )


def test_sam_is_invariant_to_loss_scale_and_usam_scales_with_it():
    grads = _grads()
    for c in (1e-3, 7.0, 1e4):
        scaled = [c * g for g in grads]
        torch.testing.assert_close(
            _flat(perturbation(scaled, 0.1, eps=0.0)), _flat(perturbation(grads, 0.1, eps=0.0)), rtol=1e-13, atol=0
        )
        torch.testing.assert_close(
            _flat(perturbation(scaled, 0.1, normalization="none")),
            c * _flat(perturbation(grads, 0.1, normalization="none")),
            rtol=1e-13,
            atol=0,
        )


def test_adaptive_matches_asam_formula():
    params = [torch.tensor([1.0, -2.0, 0.0], dtype=torch.float64), torch.tensor([[0.5]], dtype=torch.float64)]
    grads = [torch.tensor([0.3, 0.1, -0.2], dtype=torch.float64), torch.tensor([[1.0]], dtype=torch.float64)]
    e = perturbation(grads, 0.5, eps=0.0, params=params, adaptive=True, adaptive_eta=0.01)
    T = _flat(params).abs() + 0.01
    g = _flat(grads)
    expected = 0.5 * T * T * g / (T * g).norm()
    torch.testing.assert_close(_flat(e), expected, rtol=1e-14, atol=0)
    # zero-valued weights are still perturbed thanks to eta (the third coordinate)
    assert _flat(e)[2] != 0


def test_zero_gradient_gives_zero_perturbation_not_nan():
    zeros = [torch.zeros(3), torch.zeros(2, 2)]
    for eps in (0.0, 1e-12):
        for norm in ("l2", "none"):
            out = perturbation(zeros, 0.1, normalization=norm, eps=eps)
            assert all(torch.equal(o, torch.zeros_like(o)) for o in out)
        out = perturbation(zeros, 0.1, normalization="unified", lam=0.5, eps=eps)
        assert all(torch.equal(o, torch.zeros_like(o)) for o in out)
    assert perturbation([], 0.1) == []


def test_eps_is_added_to_the_norm():
    g = [torch.tensor([3.0, 4.0], dtype=torch.float64)]
    e = perturbation(g, 1.0, eps=1.0)
    torch.testing.assert_close(e[0], torch.tensor([3.0, 4.0], dtype=torch.float64) / 6.0)


@pytest.mark.parametrize("scale", [1e30, 1e-30, 1e-42])
@pytest.mark.parametrize("foreach", [True, False])
def test_global_norm_is_scale_safe_in_float32(scale, foreach):
    base = [torch.tensor([3.0, 0.0]), torch.tensor([[4.0]])]
    tensors = [t * scale for t in base]
    expected = 5.0 * scale
    got = global_norm(tensors, foreach=foreach)
    assert got.dtype == torch.float32
    assert math.isclose(got.item(), expected, rel_tol=1e-5 if scale > 1e-40 else 0.3)  # 1e-42 is subnormal in fp32


def test_global_norm_float64_underflow_and_fp16_upcast():
    t = [torch.full((10,), 1e-200, dtype=torch.float64)]
    assert math.isclose(global_norm(t).item(), math.sqrt(10) * 1e-200, rel_tol=1e-14)
    h = [torch.full((100,), 300.0, dtype=torch.float16)]  # squares overflow fp16
    n = global_norm(h)
    assert n.dtype == torch.float32 and math.isclose(n.item(), 3000.0, rel_tol=1e-6)


def test_global_norm_flags_non_finite_input():
    assert not torch.isfinite(global_norm([torch.tensor([1.0, float("nan")])]))
    assert not torch.isfinite(global_norm([torch.tensor([1.0]), torch.tensor([float("inf")])]))


def test_batched_norm_is_exact_per_row():
    x = torch.tensor([[3e-200, 4e-200], [3e200, 4e200], [0.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(
        batched_norm(x), torch.tensor([5e-200, 5e200, 0.0], dtype=torch.float64), rtol=1e-14, atol=0
    )


def test_perturbation_scale_broadcasts_over_a_batch():
    norms = torch.tensor([1.0, 2.0, 0.0], dtype=torch.float64)
    rho = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64)
    torch.testing.assert_close(
        perturbation_scale(norms, rho, eps=0.0), torch.tensor([0.1, 0.1, 0.0], dtype=torch.float64)
    )
    torch.testing.assert_close(perturbation_scale(norms, rho, normalization="none"), rho)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: check_rho(-0.1), "rho must be a finite number >= 0"),
        (lambda: check_rho(float("nan")), "rho"),
        (lambda: check_rho("0.1"), "rho must be a finite number >= 0, got '0.1'"),
        (lambda: resolve_lam("l1", None), "unknown normalization 'l1'"),
        (lambda: resolve_lam("unified", None), "needs lam"),
        (lambda: resolve_lam("unified", 1.5), r"lam must be a number in \[0, 1\]"),
        (lambda: resolve_lam("l2", 0.0), "contradicts"),
        (lambda: perturbation_scale(1.0, 0.1, eps=-1.0), "eps must be"),
        (lambda: perturbation([torch.ones(2)], 0.1, adaptive=True), "adaptive=True needs params"),
    ],
)
def test_bad_input_is_a_clear_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ---------------------------------------------------------------- one rule for the optimizer and the dynamics lab


@pytest.mark.parametrize("lam", [1.0, 0.0, 0.3])
@pytest.mark.parametrize("eps", [0.0, 1e-12])
@pytest.mark.parametrize("scale", [1.0, 1e-200, 1e-320, 1e200, 0.0])
def test_optimizer_and_dynamics_lab_compute_the_same_eps_through_one_function(monkeypatch, lam, eps, scale):
    import samkit
    from samkit import core

    calls = []
    rule = core.coefficients

    def spy(*args, **kwargs):
        calls.append(1)
        return rule(*args, **kwargs)

    monkeypatch.setattr(core, "coefficients", spy)
    g = torch.tensor([3.0, -4.0, 0.5, 1e-3], dtype=torch.float64) * scale
    # the optimizer: weights at 0, so the perturbed weights are ε itself (0 + c·g is rounded once, like c·g)
    w = torch.nn.Parameter(torch.zeros(4, dtype=torch.float64))
    w.grad = g.clone()
    opt = samkit.SAM([w], torch.optim.SGD, rho=0.7, lr=0.1, eps=eps, normalization="unified", lam=lam)
    opt.first_step()
    from_optimizer = w.detach().clone()
    opt.second_step()
    assert calls, "the optimizer computes ε through core.coefficients"
    calls.clear()
    from_lab = core.perturb_batched(g.unsqueeze(0), torch.tensor([0.7], dtype=torch.float64), lam, eps)[0]
    assert calls, "the lab computes ε through core.coefficients"
    assert torch.equal(from_optimizer, from_lab), (from_optimizer, from_lab)
    # and it is the rule: ρ((1 − λ) g + λ g/(‖g‖ + eps)), finite even where ρ/‖g‖ overflows (subnormal ‖g‖)
    expected = torch.zeros(4, dtype=torch.float64)
    if scale:
        m = g.abs().max()
        norm = m * (g / m).norm()  # ‖g‖ without under- or overflow
        normalized = (g / m) / (g / m).norm() if eps == 0 else g / (norm + eps)
        expected = 0.7 * ((1 - lam) * g + lam * normalized)
    assert torch.isfinite(from_lab).all()
    torch.testing.assert_close(from_lab, expected, rtol=1e-12, atol=1e-300)
    # the lab's simulate goes through the same function
    from samkit.dynamics import Quadratic, simulate

    calls.clear()
    simulate(Quadratic([2.0, 1.0]), "unified", 0.1, 0.7, x0=torch.ones(2), steps=1, lam=lam, eps=eps, record=())
    assert calls


@pytest.mark.parametrize("scale", [1.0, 1e-140, 1e-200, 1e-310, 1e200, 1e300, 0.0])
def test_a_batched_row_norm_is_the_global_norm_of_that_row(scale):
    g = torch.Generator().manual_seed(1)
    rows = torch.randn(3, 4, 5, generator=g, dtype=torch.float64) * scale
    got = batched_norm(rows)
    for i in range(3):
        assert torch.equal(got[i], global_norm([rows[i]])), (got[i], global_norm([rows[i]]))
        ref = rows[i].abs().max()
        exact = ref * (rows[i] / ref).norm() if scale else torch.zeros((), dtype=torch.float64)
        torch.testing.assert_close(got[i], exact, rtol=1e-14, atol=0)


def test_mixed_dtypes_are_grouped_for_the_fused_kernels():
    ts = [torch.tensor([3.0]), torch.tensor([4.0], dtype=torch.float64), torch.tensor([12.0], dtype=torch.float16)]
    for foreach in (True, False):
        n = global_norm(ts, foreach=foreach)
        assert n.dtype == torch.float64 and n.item() == 13.0
        bad = [*ts, torch.tensor([float("inf")], dtype=torch.float16)]
        assert not torch.isfinite(global_norm(bad, foreach=foreach))


def test_core_exports_the_rule_and_its_public_forms_only():
    from samkit import core

    # the optimizer's plumbing (non-finite checks, unscaling, grouping by device and dtype) is samkit.optim.ops
    assert not {"unscale_", "nonfinite", "grouped", "Groups"} & set(core.__all__)
    assert all(callable(getattr(core, name)) or name == "NORMALIZATIONS" for name in core.__all__)
