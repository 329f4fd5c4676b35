"""Hessian-vector products, top-k eigenvalues and the Hutchinson trace against exact Hessians and closed forms."""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
from torch import nn
from torch.func import functional_call

from samkit.models import MLP
from samkit.sharpness import (
    ModelObjective,
    hessian_trace,
    hessian_trace_fn,
    hvp,
    hvp_fn,
    top_eigenvalues,
    top_eigenvalues_fn,
)

F = nn.functional
F64 = torch.float64


def tiny_cnn() -> nn.Module:
    """Conv-BN-Tanh-pool-linear on 1x6x6 images (120 parameters); BN has non-trivial running statistics."""
    torch.manual_seed(1)
    m = nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.Tanh(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(27, 3)
    )
    with torch.no_grad():
        m[1].running_mean.copy_(torch.tensor([0.3, -0.2, 0.1]))
        m[1].running_var.copy_(torch.tensor([0.5, 2.0, 1.5]))
        m[1].weight.copy_(torch.tensor([1.2, 0.8, -0.7]))
    return m.double()


def tiny_mlp() -> nn.Module:
    torch.manual_seed(0)
    return MLP(in_features=6, hidden=(8,), num_classes=3).double()  # 83 parameters


def data(
    shape: tuple[int, ...], sizes: tuple[int, ...] = (10, 6), seed: int = 0
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, *shape, generator=g, dtype=F64), torch.randint(0, 3, (n,), generator=g)) for n in sizes]


def exact_hessian(model: nn.Module, batches: list) -> torch.Tensor:
    """Hessian of the mean loss over all samples (concatenated into one batch), eval mode, via autograd."""
    m = copy.deepcopy(model).double().eval()
    names = [k for k, p in m.named_parameters()]
    shapes = [p.shape for p in m.parameters()]
    sizes = [p.numel() for p in m.parameters()]
    x = torch.cat([b[0] for b in batches]).double()
    y = torch.cat([b[1] for b in batches])
    w0 = torch.cat([p.detach().reshape(-1) for p in m.parameters()])

    def loss(w: torch.Tensor) -> torch.Tensor:
        params = {k: t.view(s) for k, t, s in zip(names, torch.split(w, sizes), shapes)}
        return F.cross_entropy(functional_call(m, params, (x,)), y)

    return torch.autograd.functional.hessian(loss, w0)


CASES = {"mlp": (tiny_mlp, (6,)), "cnn": (tiny_cnn, (1, 6, 6))}


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request):
    build, shape = CASES[request.param]
    model = build()
    model.train()  # the toolkit must evaluate in eval mode by default anyway
    batches = data(shape)
    H = exact_hessian(model, batches)
    evals, evecs = torch.linalg.eigh(H)
    return model, batches, H, evals.flip(0), evecs.flip(1)


def test_hvp_exact_over_batches(case):
    model, batches, H, _, _ = case
    v = torch.randn(H.shape[0], generator=torch.Generator().manual_seed(3), dtype=F64)
    out = hvp(model, F.cross_entropy, batches, v)
    torch.testing.assert_close(out, H @ v, rtol=1e-9, atol=1e-11)
    # a DataLoader with other batch sizes and a one-shot generator give the same exact product
    ds = torch.utils.data.TensorDataset(torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches]))
    loader = torch.utils.data.DataLoader(ds, batch_size=5)
    torch.testing.assert_close(hvp(model, F.cross_entropy, loader, v), H @ v, rtol=1e-9, atol=1e-11)
    obj = ModelObjective(model, F.cross_entropy, (b for b in batches))
    torch.testing.assert_close(obj.hvp(v), obj.hvp(v))  # the generator was kept for the second pass


@pytest.mark.parametrize("method", ["lanczos", "power"])
def test_top3_match_exact_hessian(case, method):
    model, batches, H, evals, evecs = case
    assert evals[2] > 0 and evals[2] - evals[3] > 1e-3 * evals[0]  # the top 3 are well defined
    tol = 1e-10 if method == "lanczos" else 1e-8  # power converges linearly: keep the test fast
    r = top_eigenvalues(model, F.cross_entropy, batches, k=3, method=method, tol=tol, max_iter=3000)
    assert r.converged and r.eigenvalues.dtype == F64
    torch.testing.assert_close(r.eigenvalues, evals[:3], rtol=1e-4, atol=0)
    assert r.eigenvectors.shape == (3, H.shape[0])
    for i in range(3):
        u = r.eigenvectors[i]
        assert abs(float(u @ evecs[:, i])) > 1 - 1e-4  # the right eigenvector (up to sign)
        assert float((H @ u - r.eigenvalues[i] * u).norm()) < 1e-3 * float(evals[0])
    assert r.n_hvp > 3


def test_lanczos_needs_fewer_products_than_power(case):
    model, batches, _, evals, _ = case
    kw = dict(k=1, tol=1e-6, max_iter=5000)
    lz = top_eigenvalues(model, F.cross_entropy, batches, method="lanczos", **kw)
    pw = top_eigenvalues(model, F.cross_entropy, batches, method="power", **kw)
    assert abs(float(lz.eigenvalues[0] / evals[0]) - 1) < 1e-6
    assert lz.n_hvp < pw.n_hvp


def test_float32_and_float64_option():
    model = tiny_mlp().float()
    batches = [(x.float(), y) for x, y in data((6,))]
    exact = torch.linalg.eigvalsh(exact_hessian(model, batches)).flip(0)
    for method in ("lanczos", "power"):
        r32 = top_eigenvalues(model, F.cross_entropy, batches, k=1, method=method, tol=1e-5, max_iter=3000)
        assert r32.eigenvalues.dtype == torch.float32
        assert abs(float(r32.eigenvalues[0]) / float(exact[0]) - 1) < 1e-3
        r64 = top_eigenvalues(model, F.cross_entropy, batches, k=2, method=method, tol=1e-10, max_iter=3000, dtype=F64)
        assert r64.eigenvalues.dtype == F64 and r64.eigenvectors.dtype == F64
        # float32 weights converted to float64 exactly: agrees with the float64 exact Hessian to 1e-6
        torch.testing.assert_close(r64.eigenvalues, exact[:2], rtol=1e-6, atol=0)
    assert next(model.parameters()).dtype == torch.float32  # the model itself was not converted


def test_hutchinson_trace_within_three_standard_errors(case):
    model, batches, H, _, _ = case
    exact = float(torch.trace(H))
    r = hessian_trace(model, F.cross_entropy, batches, n_samples=100, seed=0)
    assert r.n_hvp == 100 and r.samples.shape == (100,)
    assert r.stderr > 0
    assert abs(r.trace - exact) <= 3 * r.stderr
    # the standard error is the right size: Rademacher variance is 2 * sum_{i != j} H_ij^2
    var = 2 * float((H**2).sum() - (torch.diagonal(H) ** 2).sum())
    assert 0.5 < r.stderr / math.sqrt(var / 100) < 1.5
    assert hessian_trace(model, F.cross_entropy, batches, n_samples=100, seed=0).trace == r.trace  # seeded


def random_quadratic(eigs: list[float], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(len(eigs), len(eigs), generator=g, dtype=F64))
    return Q @ torch.diag(torch.tensor(eigs, dtype=F64)) @ Q.T, Q


@pytest.mark.parametrize("method", ["lanczos", "power"])
@pytest.mark.parametrize("beta", [0.5, 2.0, 40.0])
def test_quadratic_top_eigenvalue_is_beta(method, beta):
    eigs = [beta, 0.4 * beta, 0.1 * beta, -0.05 * beta] + [0.01 * beta] * 16
    A, Q = random_quadratic(eigs)
    x = torch.randn(20, dtype=F64)
    f = lambda w: 0.5 * w @ A @ w  # noqa: E731
    for op in (f, lambda v: A @ v, A):  # function, Hessian-vector product, matrix
        r = top_eigenvalues_fn(op, x, k=3, method=method, tol=1e-12, max_iter=2000)
        torch.testing.assert_close(r.eigenvalues, torch.tensor(eigs[:3], dtype=F64), rtol=1e-8, atol=0)
        assert abs(float(r.eigenvectors[0] @ Q[:, 0])) > 1 - 1e-8


@pytest.mark.parametrize("method", ["lanczos", "power"])
@pytest.mark.parametrize("y", [0.5, 1.3, 2.0, -1.7])
def test_single_neuron_log_cosh_top_eigenvalue_is_y_squared(method, y):
    """L(x, y) = log cosh(x y); at (0, y) the Hessian is [[y^2, 0], [0, 0]] (l''(0) = 1)."""
    f = lambda p: torch.log(torch.cosh(p[0] * p[1]))  # noqa: E731
    p = torch.tensor([0.0, y], dtype=F64)
    r = top_eigenvalues_fn(f, p, k=2, method=method, tol=1e-12)
    torch.testing.assert_close(r.eigenvalues, torch.tensor([y * y, 0.0], dtype=F64), rtol=1e-10, atol=1e-12)
    assert abs(float(r.eigenvectors[0, 0])) == pytest.approx(1.0, abs=1e-8)  # along x
    torch.testing.assert_close(hvp_fn(f, p, torch.tensor([1.0, 1.0], dtype=F64)), torch.tensor([y * y, 0.0], dtype=F64))
    assert hessian_trace_fn(f, p, n_samples=4).trace == pytest.approx(y * y, rel=1e-12)


def test_repeated_and_negative_eigenvalues():
    H = torch.diag(torch.tensor([3.0, 3.0, 1.0, -5.0, 0.5], dtype=F64))
    x = torch.zeros(5, dtype=F64)
    for method in ("lanczos", "power"):
        r = top_eigenvalues_fn(H, x, k=3, method=method, tol=1e-12)
        torch.testing.assert_close(r.eigenvalues, torch.tensor([3.0, 3.0, 1.0], dtype=F64), rtol=1e-9, atol=1e-12)
        # the two eigenvectors for 3 span the first two coordinates
        assert float(r.eigenvectors[:2, :2].det().abs()) == pytest.approx(1.0, abs=1e-6)


def test_not_converged_warns():
    A, _ = random_quadratic([1.0 - 0.01 * i for i in range(60)])
    x = torch.zeros(60, dtype=F64)
    for method in ("lanczos", "power"):
        with pytest.warns(RuntimeWarning, match="did not reach tol"):
            r = top_eigenvalues_fn(A, x, k=1, method=method, tol=1e-12, max_iter=3)
        assert not r.converged and r.n_hvp == 3


def test_seeded_and_deterministic():
    A, _ = random_quadratic([5.0, 4.0, 3.0, 1.0, 0.5])
    x = torch.zeros(5, dtype=F64)
    a = top_eigenvalues_fn(A, x, k=2, tol=1e-3, seed=7)
    b = top_eigenvalues_fn(A, x, k=2, tol=1e-3, seed=7)
    assert torch.equal(a.eigenvalues, b.eigenvalues) and torch.equal(a.eigenvectors, b.eigenvectors)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        c = top_eigenvalues_fn(A, x, k=1, tol=1e-3, seed=8, max_iter=2)
        d = top_eigenvalues_fn(A, x, k=1, tol=1e-3, seed=7, max_iter=2)
    assert not torch.equal(c.eigenvalues, d.eigenvalues)
