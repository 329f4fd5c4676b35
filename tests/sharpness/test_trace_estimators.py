"""Hessian trace (Hutchinson, Hutch++) and diagonal estimators against exact small Hessians (float64).

Statistical tests use fixed seed sets, so they are deterministic; each bound is stated where it is used. A mean over
n independent estimates is compared with the exact value in units of its standard error (std / sqrt(n)): at 4 units a
correct estimator fails with probability about 6e-5 (normal approximation), so a failure means bias, not bad luck.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.func import functional_call

from samkit.sharpness import (
    TRACE_METHODS,
    DiagonalResult,
    TraceResult,
    hessian_diagonal,
    hessian_diagonal_fn,
    hessian_trace,
    hessian_trace_fn,
)

F = nn.functional
F64 = torch.float64


def spectrum_matrix(eigs: list[float] | torch.Tensor, seed: int = 0) -> torch.Tensor:
    """``Q diag(eigs) Q^T`` with a seeded random orthogonal ``Q`` (float64)."""
    eigs = torch.as_tensor(eigs, dtype=F64)
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(len(eigs), len(eigs), generator=g, dtype=F64))
    return Q @ torch.diag(eigs) @ Q.T


def model_hessian(model: nn.Module, batches: list) -> torch.Tensor:
    """The exact Hessian of the mean loss over all samples (one batch), eval mode, via autograd (float64 model)."""
    names = [k for k, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    w0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def loss(w: torch.Tensor) -> torch.Tensor:
        parts = torch.split(w, [s.numel() for s in shapes])
        return F.cross_entropy(
            functional_call(model, dict(zip(names, (t.view(s) for t, s in zip(parts, shapes)))), x), y
        )

    return torch.autograd.functional.hessian(loss, w0)


def tanh_mlp() -> tuple[nn.Module, list]:
    """The model and data of the pre-change reference values (see ``test_hutchinson_unchanged``)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(n, 4, generator=g), torch.randint(0, 3, (n,), generator=g)) for n in (10, 7)]
    return model, batches


def old_hutchinson(hvp, n: int, dim: int, dtype: torch.dtype, samples: int, seed: int) -> tuple[float, float]:
    """The Hutchinson loop as it was before Hutch++ was added, inlined: the default method must match it bit for bit."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(samples):
        z = (torch.randint(0, 2, (dim,), generator=gen) * 2 - 1).to(dtype=dtype)
        out.append(float(z @ hvp(z)))
    s = torch.tensor(out, dtype=F64)
    return float(s.mean()), float(s.std(unbiased=True)) / math.sqrt(samples)


# -- Hutchinson: unchanged ---------------------------------------------------------------------------------------


def test_hutchinson_unchanged():
    """Values computed by the code before Hutch++ (saved then), and the old loop inlined, bit for bit."""
    model, batches = tanh_mlp()
    r = hessian_trace(model, F.cross_entropy, batches, 10, seed=0)
    assert (r.trace, r.stderr) == pytest.approx((2.8399385154247283, 0.757540547860415), rel=1e-6)  # float32
    r = hessian_trace(model, F.cross_entropy, batches, 37, seed=7, dtype=F64)
    assert (r.trace, r.stderr) == pytest.approx((2.3406210904657083, 0.45160290412673376), rel=1e-12)
    r = hessian_trace(model, F.cross_entropy, batches)
    assert (r.trace, r.stderr) == pytest.approx((2.146114810556173, 0.23761868577572445), rel=1e-6)
    assert (r.method, r.n_samples, r.n_hvp, r.sketch_rank, r.sketch_trace) == ("hutchinson", 100, 100, 0, 0.0)
    g = torch.Generator().manual_seed(1)
    for n in (10, 7):
        torch.randn(n, 4, generator=g), torch.randint(0, 3, (n,), generator=g)
    A = torch.randn(12, 12, generator=g, dtype=F64)
    A = A + A.T
    x = torch.randn(12, generator=g, dtype=F64)
    assert hessian_trace_fn(A, x, 25, seed=0).trace == pytest.approx(-0.364524967169607, rel=1e-12)
    assert hessian_trace_fn(A, x).stderr == pytest.approx(2.675444085572128, rel=1e-12)
    f = lambda w: 0.5 * w @ A @ w + (w**4).sum()  # noqa: E731
    assert hessian_trace_fn(f, x, 25, seed=3).trace == pytest.approx(156.46141124049657, rel=1e-12)
    for seed, n in ((0, 2), (5, 31)):
        for op in (A, lambda v: A @ v):
            r = hessian_trace_fn(op, x, n, seed=seed, method="hutchinson")
            assert (r.trace, r.stderr) == old_hutchinson(lambda v: A @ v, n, 12, F64, n, seed)


# -- Hutch++ -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rank", [1, 3, 5])
def test_hutchpp_exact_when_the_sketch_covers_the_rank(rank):
    """rank(H) <= n_samples // 3: range(H S) = range(H), so P H P = 0 and tr(Q^T H Q) = tr H (to roundoff)."""
    eigs = [0.0] * 30
    eigs[:rank] = [7.0, -2.5, 1.0, 0.3, -0.01][:rank]
    H = spectrum_matrix(eigs, seed=rank)
    x = torch.randn(30, dtype=F64)
    f = lambda w: 0.5 * w @ H @ w  # noqa: E731
    for budget in (3 * rank + 1, 3 * rank + 2, 3 * rank + 7):
        for op in (H, lambda v: H @ v, f):
            r = hessian_trace_fn(op, x, budget, seed=budget, method="hutch++")
            assert abs(r.trace - sum(eigs)) <= 1e-10 and r.stderr <= 1e-10
            assert r.n_hvp == budget and r.sketch_rank == budget // 3 and r.n_samples == budget - 2 * (budget // 3)
            assert r.sketch_trace == pytest.approx(sum(eigs), abs=1e-10)


def test_hutchpp_exact_for_a_low_rank_model_hessian():
    """A bias-free linear model with squared loss on 3 samples: H = (2/3) X^T X has rank 3 (20 parameters)."""
    model = nn.Linear(20, 1, bias=False).double()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 20, generator=g, dtype=F64)
    exact = float(2 / 3 * (x * x).sum())
    r = hessian_trace(model, F.mse_loss, [(x, torch.zeros(3, 1, dtype=F64))], 9, method="hutch++", seed=4)
    assert abs(r.trace - exact) <= 1e-10 * exact and r.stderr <= 1e-10 * exact
    r32 = hessian_trace(model.float(), F.mse_loss, [(x.float(), torch.zeros(3, 1))], 9, method="hutch++")
    assert r32.trace == pytest.approx(exact, rel=1e-5)  # float32 products
    r64 = hessian_trace(model, F.mse_loss, [(x.float(), torch.zeros(3, 1))], 9, method="hutch++", dtype=F64)
    assert r64.samples.dtype == F64 and r64.trace == pytest.approx(exact, rel=1e-6)  # float32 data, float64 maths


def test_hutchpp_on_a_model_against_the_exact_hessian():
    """A tanh MLP (51 parameters): within 4 standard errors of tr H; a sketch of the whole space is exact."""
    model, batches = tanh_mlp()
    model = model.double()
    batches = [(x.double(), y) for x, y in batches]
    H = model_hessian(model, batches)
    exact = float(torch.trace(H))
    r = hessian_trace(model, F.cross_entropy, batches, 30, method="hutch++", seed=1)
    assert abs(r.trace - exact) <= 4 * r.stderr and r.stderr > 0
    assert r.trace == pytest.approx(float(r.samples.mean()), rel=1e-15)
    assert hessian_trace(model, F.cross_entropy, batches, 30, method="hutch++", seed=1).trace == r.trace  # seeded
    assert hessian_trace(model, F.cross_entropy, batches, 30, method="hutch++", seed=2).trace != r.trace
    full = hessian_trace(model, F.cross_entropy, batches, 3 * 51 + 2, method="hutch++")  # sketch = whole space
    assert abs(full.trace - exact) <= 1e-10 * abs(exact)


@pytest.mark.parametrize("method", TRACE_METHODS)
def test_unbiased_over_seeds(method):
    """Mean over 400 seeds within 4 standard errors (of that mean) of the exact trace, on an indefinite spectrum."""
    eigs = [5.0 * 0.7**i for i in range(12)] + [-1.0, -0.4] + [0.05] * 26
    H = spectrum_matrix(eigs, seed=3)
    x = torch.zeros(40, dtype=F64)
    est = torch.tensor([hessian_trace_fn(H, x, 12, seed=s, method=method).trace for s in range(400)], dtype=F64)
    stderr = float(est.std()) / math.sqrt(len(est))
    assert stderr > 0 and abs(float(est.mean()) - sum(eigs)) <= 4 * stderr


def test_hutchpp_variance_below_hutchinson_on_a_decaying_spectrum():
    """lambda_i = i^-2 (n = 100), 30 products: Hutch++ deflates the top 10 directions; and a flat spectrum.

    Measured over 200 seeds: the variance ratio Hutch++ / Hutchinson is 0.002 on the decaying spectrum (bound: 0.05,
    25x above it, far beyond the +-20% seed noise of a ratio of two 200-seed variances; an estimator merely as good as
    Hutchinson fails it). On a flat spectrum (eigenvalues 1 +- 0.3, so H is close to the identity) the ratio is 6.0:
    Rademacher probes are nearly exact for a near-diagonal H, and the projection P = I - Q Q^T makes the residual
    P H P far from diagonal, so Hutch++ is worse there (bound: > 1).
    """

    def variance(H: torch.Tensor, method: str) -> float:
        x = torch.zeros(len(H), dtype=F64)
        return float(torch.tensor([hessian_trace_fn(H, x, 30, seed=s, method=method).trace for s in range(200)]).var())

    decaying = spectrum_matrix([1.0 / i**2 for i in range(1, 101)], seed=5)
    assert variance(decaying, "hutch++") < 0.05 * variance(decaying, "hutchinson")
    flat = spectrum_matrix((1 + 0.3 * torch.randn(100, generator=torch.Generator().manual_seed(0))).tolist(), seed=6)
    assert variance(flat, "hutch++") > variance(flat, "hutchinson")


def test_hutchpp_keeps_the_device_and_dtype():
    H = spectrum_matrix([3.0, 1.0, 0.5, 0.1], seed=0).float()
    r = hessian_trace_fn(H, torch.zeros(4), 12, method="hutch++")
    assert r.trace == pytest.approx(4.6, rel=1e-5)  # float32 QR and products: rank 4 <= 12 // 3
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device: the GPU half of this test needs one")
    H64 = spectrum_matrix([float(i) for i in range(20)], seed=1)
    cpu = hessian_trace_fn(H64, torch.zeros(20, dtype=F64), 15, method="hutch++", seed=3)
    gpu = hessian_trace_fn(H64.cuda(), torch.zeros(20, dtype=F64, device="cuda"), 15, method="hutch++", seed=3)
    assert gpu.trace == pytest.approx(cpu.trace, rel=1e-10)  # same probes (a CPU generator) on any device


# -- Diagonal ------------------------------------------------------------------------------------------------------


def test_diagonal_exact_for_a_diagonal_hessian():
    """z * (D z) = z^2 * diag(D) = diag(D) for every Rademacher z: exact with any number of probes."""
    d = torch.tensor([3.0, -1.0, 0.25, 7.0, 0.0], dtype=F64)
    f = lambda w: 0.5 * (d * w * w).sum() + w.sum()  # noqa: E731
    for op in (torch.diag(d), lambda v: d * v, f):
        r = hessian_diagonal_fn(op, torch.ones(5, dtype=F64), n_samples=3, seed=9)
        assert (
            isinstance(r, DiagonalResult)
            and torch.equal(r.diagonal, d)
            and torch.equal(r.stderr, torch.zeros(5, dtype=F64))
        )
    x = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, -3.0]], dtype=F64)  # orthogonal inputs: diagonal H
    model = nn.Linear(3, 1, bias=False).double()
    r = hessian_diagonal(model, F.mse_loss, [(x, torch.zeros(3, 1, dtype=F64))], n_samples=2)
    assert r.names == ["weight"] and r.diagonal[0].shape == (1, 3)
    torch.testing.assert_close(r.diagonal[0], torch.tensor([[2 / 3, 8 / 3, 6.0]], dtype=F64), rtol=1e-14, atol=0)


def test_diagonal_unbiased_in_the_parameter_shapes():
    """A tanh MLP against its exact Hessian: every entry within 4.5 of its own standard errors (1000 probes; with 51
    entries the chance that a correct estimator has one beyond 4.5 is about 51 * 7e-6 = 3e-4), and the sum of the
    diagonal is Hutchinson's trace with the same probes (z^T H z = sum_i z_i (H z)_i)."""
    model, batches = tanh_mlp()
    model = model.double()
    batches = [(x.double(), y) for x, y in batches]
    exact = torch.diagonal(model_hessian(model, batches))
    r = hessian_diagonal(model, F.cross_entropy, batches, n_samples=1000, seed=2)
    assert r.names == [k for k, _ in model.named_parameters()] and r.n_hvp == r.n_samples == 1000
    assert [t.shape for t in r.diagonal] == [p.shape for p in model.parameters()] == [t.shape for t in r.stderr]
    flat = torch.cat([t.reshape(-1) for t in r.diagonal])
    se = torch.cat([t.reshape(-1) for t in r.stderr])
    assert bool((se > 0).all()) and float(((flat - exact).abs() / se).max()) <= 4.5
    small = hessian_diagonal(model, F.cross_entropy, batches, n_samples=7, seed=3)
    trace = hessian_trace(model, F.cross_entropy, batches, 7, seed=3).trace
    assert float(sum(t.sum() for t in small.diagonal)) == pytest.approx(trace, rel=1e-12)


def test_diagonal_standard_error_is_the_spread_of_the_probes():
    H = spectrum_matrix([2.0, 1.0, -1.0, 0.5], seed=2)
    r = hessian_diagonal_fn(H, torch.zeros(2, 2, dtype=F64), n_samples=6, seed=4)  # any shape: flattened
    gen = torch.Generator().manual_seed(4)
    z = torch.stack([(torch.randint(0, 2, (4,), generator=gen) * 2 - 1).to(F64) for _ in range(6)])
    per_probe = z * (z @ H)  # rows: z * H z (H symmetric)
    assert r.diagonal.shape == (2, 2)
    torch.testing.assert_close(r.diagonal.reshape(-1), per_probe.mean(0), rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(r.stderr.reshape(-1), per_probe.std(0) / math.sqrt(6), rtol=1e-12, atol=1e-13)


# -- Errors --------------------------------------------------------------------------------------------------------


def test_bad_arguments_name_the_value():
    H = torch.eye(6, dtype=F64)
    x = torch.zeros(6, dtype=F64)
    with pytest.raises(ValueError, match=r"unknown method 'hutchpp'; allowed: 'hutchinson', 'hutch\+\+'"):
        hessian_trace_fn(H, x, method="hutchpp")
    with pytest.raises(ValueError, match=r"n_samples must be an integer >= 4 \(method='hutch\+\+' .*\), got 3"):
        hessian_trace_fn(H, x, 3, method="hutch++")
    with pytest.raises(ValueError, match=r"n_samples must be an integer >= 4 .*got 12.5"):
        hessian_trace_fn(H, x, 12.5, method="hutch++")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"n_samples must be an integer >= 2 .*got 1"):
        hessian_trace_fn(H, x, 1)
    with pytest.raises(ValueError, match=r"n_samples must be an integer >= 2 .*got 1"):
        hessian_diagonal_fn(H, x, 1)
    model, batches = tanh_mlp()
    with pytest.raises(ValueError, match=r"unknown method 'lanczos'"):
        hessian_trace(model, F.cross_entropy, batches, method="lanczos")
    with pytest.raises(ValueError, match=r"n_samples must be an integer >= 2 .*got 0"):
        hessian_diagonal(model, F.cross_entropy, batches, n_samples=0)
    assert isinstance(hessian_trace_fn(H, x, 4, method="hutch++"), TraceResult)  # the smallest budget works
