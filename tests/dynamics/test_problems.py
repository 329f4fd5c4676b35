"""Closed-form gradients, Hessian-vector products and sharpness against autograd, for every problem."""

import pytest
import torch

from samkit.dynamics import (
    MatrixSensing,
    PLManifold,
    Quadratic,
    ScalarFactorization,
    SingleNeuron,
    SmoothStronglyConvex,
)


def _problems():
    return [
        Quadratic([5.0, 2.0, 0.5], rotate=True, seed=3),
        Quadratic([4.0, 0.0]),
        SmoothStronglyConvex([6.0, 2.0, 1.0], c=0.7, rotate=True, seed=1),
        ScalarFactorization(),
        SingleNeuron("logcosh"),
        SingleNeuron("sqrt"),
        PLManifold(m=0.5, M=3.0),
        MatrixSensing(d=4, r=2, seed=1, power_iters=300),
    ]


def _points(p, n=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return 1.5 * torch.randn(n, *p.shape, generator=g, dtype=torch.float64)


def _autograd_grad(p, x):
    x = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(p.loss(x).sum(), x)
    return g


def _autograd_hessian(p, x1):
    n = x1.numel()
    H = torch.autograd.functional.hessian(lambda z: p.loss(z.view(1, *p.shape)).sum(), x1.reshape(-1))
    return H.view(n, n)


@pytest.mark.parametrize("p", _problems(), ids=lambda p: f"{type(p).__name__}")
def test_grad_hvp_sharpness_match_autograd(p):
    x = _points(p)
    v = _points(p, seed=1)
    # closed forms and autograd compute the same float64 expression up to rounding: 1e-10 relative
    g = p.grad(x)
    ga = _autograd_grad(p, x)
    torch.testing.assert_close(g, ga, rtol=1e-10, atol=1e-10)
    assert p.loss(x).shape == (5,) and g.shape == (5, *p.shape)
    hv = p.hvp(x, v)
    for b in range(x.shape[0]):
        H = _autograd_hessian(p, x[b])
        torch.testing.assert_close(hv[b].reshape(-1), H @ v[b].reshape(-1), rtol=1e-9, atol=1e-9)
        # sharpness: exact for closed forms; the power iteration (MatrixSensing) converges to 1e-6 relative
        # in 300 iterations on these 16-dimensional Hessians (their top gap is not tiny); 1e-4 is ample
        top = torch.linalg.eigvalsh(0.5 * (H + H.T))[-1]
        torch.testing.assert_close(p.sharpness(x[b]), top, rtol=1e-4, atol=1e-8)


@pytest.mark.parametrize("p", _problems()[:7], ids=lambda p: f"{type(p).__name__}")
def test_unbatched_input_gives_unbatched_output(p):
    x = _points(p, n=1)[0]
    assert p.loss(x).shape == ()
    assert p.grad(x).shape == x.shape
    with pytest.raises(ValueError, match="shape"):
        p.loss(torch.zeros(7, 9))


def test_minima_and_distances():
    sf, sn, pl = ScalarFactorization(), SingleNeuron(), PLManifold()
    pts = torch.tensor([[0.0, 2.0], [3.0, 0.0]], dtype=torch.float64)
    for p in (sf, sn):
        assert p.loss(pts).abs().max() == 0 and p.grad(pts).abs().max() == 0
        assert p.distance_to_minima(torch.tensor([[0.5, -2.0]])).item() == 0.5
    # sharpness on the y-axis is y² (plotting y² plots sharpness)
    torch.testing.assert_close(sn.sharpness(torch.tensor([[0.0, 3.0]])), torch.tensor([9.0], dtype=torch.float64))
    # PL manifold: minima {x = 0}, sharpness there h(y), PL inequality ‖∇L‖² ≥ 2μL at random points
    y = torch.linspace(-3, 3, 7, dtype=torch.float64)
    on = torch.stack([torch.zeros_like(y), y], 1)
    assert pl.loss(on).abs().max() == 0
    torch.testing.assert_close(pl.sharpness(on), pl.h(y))
    x = _points(pl, n=200)
    assert (pl.grad(x).pow(2).sum(1) >= 2 * pl.mu * pl.loss(x) * (1 - 1e-12)).all()
    # its beta bounds the sharpness on the strip |x| <= x_max (dense grid)
    g = torch.stack(torch.meshgrid(torch.linspace(-1, 1, 81), torch.linspace(-4, 4, 161), indexing="ij"), -1)
    g = g.reshape(-1, 2).to(torch.float64)
    assert pl.sharpness(g).max() <= pl.beta
    q = Quadratic([3.0, 0.0], rotate=True, seed=2)
    torch.testing.assert_close(q.distance_to_minima(q.Q[:, 1] * 5.0), torch.tensor(0.0, dtype=torch.float64))


def test_smooth_strongly_convex_curvature_bounds():
    p = SmoothStronglyConvex([8.0, 3.0], c=0.6)
    x = 5 * _points(p, n=500)
    s = p.sharpness(x)
    # every Hessian eigenvalue lies in [mu, beta]: the diagonal curvature a_i(1 - c sech²) (closed form)
    curv = p._curv(x)
    assert (curv >= p.mu - 1e-12).all() and (s <= p.beta).all()
    assert p.grad(torch.zeros(1, 2)).abs().max() == 0 and p.loss(torch.zeros(1, 2)).abs().max() == 0


def test_matrix_sensing_setup():
    p = MatrixSensing(d=8, r=2, seed=0)
    assert p.A.shape == (80, 64) and p.m == 80
    # A_i symmetric, y_i = <A_i, X*>, ||U*||_2 = 1, X* rank r
    A = p.A.view(-1, 8, 8)
    torch.testing.assert_close(A, A.transpose(1, 2))
    torch.testing.assert_close(p.y, (A * p.X_star).sum((1, 2)))
    assert torch.linalg.matrix_rank(p.X_star).item() == 2
    assert abs(torch.linalg.matrix_norm(p.U_star, 2).item() - 1) < 1e-12
    assert p.recovery_error(p.U_full_star()).item() < 1e-12
    U = p.init(1e-3, batch=3)
    torch.testing.assert_close(U[1], 1e-3 * torch.eye(8, dtype=torch.float64))
    R1, R2 = p.init(0.5, kind="random", seed=4, batch=2), p.init(0.5, kind="random", seed=4, batch=2)
    assert torch.equal(R1, R2) and not torch.equal(R1[0], R1[1])
    # same seed, same data
    assert torch.equal(MatrixSensing(d=8, r=2, seed=0).A, p.A)
    with pytest.raises(ValueError):
        p.init(1.0, kind="nope")


def test_matrix_sensing_packed_layout_equals_the_full_one():
    """The measurements are stored as upper triangles (half the memory and arithmetic): the data are the ones the
    full [m, d²] layout held, entry for entry, and every quantity agrees with the full-layout formulas."""
    d, r, m, seed = 7, 2, 40, 3
    p = MatrixSensing(d=d, r=r, m=m, seed=seed)
    g = torch.Generator().manual_seed(seed)
    torch.randn(d, r, generator=g, dtype=torch.float64)  # U*, drawn first
    G = torch.randn(m, d, d, generator=g, dtype=torch.float64)
    assert torch.equal(p.A, (0.5 * (G + G.transpose(1, 2))).reshape(m, d * d))  # same A, bit for bit
    A = p.A
    U = p.init(0.7, kind="random", seed=1, batch=4)
    V = p.init(0.3, kind="random", seed=2, batch=4)
    X = U @ U.transpose(1, 2)
    res = X.reshape(4, -1) @ A.T - A @ p.X_star.reshape(-1)
    torch.testing.assert_close(p.residuals(U), res, rtol=1e-13, atol=1e-13)
    S = (res @ A).view(4, d, d)
    torch.testing.assert_close(p.grad(U), (2.0 / m) * S @ U, rtol=1e-13, atol=1e-13)
    uvt = U @ V.transpose(1, 2)
    dS = (2.0 * uvt.reshape(4, -1) @ A.T @ A).view(4, d, d)
    torch.testing.assert_close(p.hvp(U, V), (2.0 / m) * (dS @ U + S @ V), rtol=1e-12, atol=1e-12)
