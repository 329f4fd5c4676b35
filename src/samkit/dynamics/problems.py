"""Analytic problems for the dynamics lab: float64, batched over a leading axis, closed-form gradients.

Every problem has ``shape`` (the shape of one iterate) and the methods ``loss(x) -> [B]``,
``grad(x) -> [B, *shape]``, ``hvp(x, v) -> [B, *shape]`` and ``sharpness(x) -> [B]`` (the top eigenvalue
of the Hessian; closed form where cheap, else a batched power iteration on ``hvp``). An unbatched input
of shape ``shape`` is accepted too and gives unbatched outputs. Where the minima are known,
``distance_to_minima(x) -> [B]`` gives the Euclidean distance to the set of minimizers.

Example:
    >>> import torch
    >>> from samkit.dynamics import Quadratic
    >>> q = Quadratic([10.0, 1.0])
    >>> q.loss(torch.tensor([1.0, 1.0])).item(), q.grad(torch.tensor([1.0, 1.0])).tolist()
    (5.5, [10.0, 1.0])
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from samkit._checks import batch_view, integer, number

__all__ = [
    "Problem",
    "Quadratic",
    "SmoothStronglyConvex",
    "ScalarFactorization",
    "SingleNeuron",
    "PLManifold",
    "MatrixSensing",
    "batched_power_iteration",
]

DTYPE = torch.float64


def _bdot(a: Tensor, b: Tensor) -> Tensor:
    """Batched inner product over all trailing dims."""
    return (a * b).flatten(1).sum(1)


class Problem:
    """Base class: subclasses set ``shape`` and implement ``_loss``, ``_grad``, ``_hvp`` on batched float64.

    The public methods accept ``(*shape)`` or ``(B, *shape)`` inputs (any float dtype, converted to float64).
    The default :meth:`sharpness` runs a batched power iteration on :meth:`hvp` (``power_iters`` steps, with a
    shifted second pass when the dominant eigenvalue is negative, so the result is the algebraic maximum).
    """

    shape: tuple[int, ...] = ()
    power_iters: int = 50
    name: str = "problem"
    #: the gradient is a few elementwise operations: :func:`~samkit.dynamics.simulate` compiles large sweeps of it
    #: (``fused=None``); False where matrix products dominate (compilation gains little there)
    fusable: bool = True

    # -- helpers -------------------------------------------------------------------------------------------
    def _batch(self, x: Tensor) -> tuple[Tensor, bool]:
        x = torch.as_tensor(x, dtype=DTYPE)
        if tuple(x.shape) == tuple(self.shape):
            return x.unsqueeze(0), True
        if tuple(x.shape[1:]) != tuple(self.shape):
            raise ValueError(
                f"{type(self).__name__} iterates have shape {tuple(self.shape)}; got a tensor of shape "
                f"{tuple(x.shape)} (expected {tuple(self.shape)} or (B, *{tuple(self.shape)}))"
            )
        return x, False

    @staticmethod
    def _unbatch(y: Tensor, single: bool) -> Tensor:
        return y.squeeze(0) if single else y

    def to(self, device: torch.device | str) -> Problem:
        """A copy of this problem whose tensors live on ``device`` (the problem itself is unchanged).

        >>> Quadratic([2.0, 1.0]).to("cpu").eigenvalues.device
        device(type='cpu')
        """
        out = copy.copy(self)
        for key, value in vars(self).items():
            if isinstance(value, Tensor):
                setattr(out, key, value.to(device))
        return out

    # -- public API ----------------------------------------------------------------------------------------
    def loss(self, x: Tensor) -> Tensor:
        """Loss per configuration, shape ``[B]``."""
        xb, single = self._batch(x)
        return self._unbatch(self._loss(xb), single)

    def grad(self, x: Tensor) -> Tensor:
        """Closed-form gradient, shape ``[B, *shape]``."""
        xb, single = self._batch(x)
        return self._unbatch(self._grad(xb), single)

    def hvp(self, x: Tensor, v: Tensor) -> Tensor:
        """Hessian-vector product ``∇²L(x) v``, shape ``[B, *shape]``."""
        xb, single = self._batch(x)
        vb, _ = self._batch(v)
        vb = vb.expand_as(xb)
        return self._unbatch(self._hvp(xb, vb), single)

    def sharpness(self, x: Tensor) -> Tensor:
        """Top eigenvalue λ_max(∇²L(x)), shape ``[B]``."""
        xb, single = self._batch(x)
        return self._unbatch(self._sharpness(xb), single)

    def default_x0(self) -> Tensor:
        """A generic starting point (used by :func:`samkit.dynamics.simulate` when ``x0`` is None)."""
        g = torch.Generator().manual_seed(12345)
        return torch.randn(self.shape, generator=g, dtype=DTYPE)

    # -- to implement --------------------------------------------------------------------------------------
    def _loss(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _grad(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _hvp(self, x: Tensor, v: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _sharpness(self, x: Tensor) -> Tensor:
        return batched_power_iteration(lambda v: self._hvp(x, v), x.shape, iters=self.power_iters, device=x.device)


def batched_power_iteration(
    hvp: Callable[[Tensor], Tensor],
    batch_shape: Sequence[int],
    *,
    iters: int = 50,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> Tensor:
    """Batched top (algebraic) eigenvalue of a symmetric operator given by ``hvp(v) -> [B, *shape]``.

    Power iteration gives the eigenvalue of largest magnitude λ₁ (Rayleigh quotient); where λ₁ < 0 a second
    pass on ``H − λ₁ I`` (whose dominant eigenvalue is λ_max − λ₁ ≥ 0) recovers λ_max.

    >>> A = torch.diag(torch.tensor([3.0, -5.0, 1.0], dtype=torch.float64))
    >>> round(batched_power_iteration(lambda v: v @ A, (1, 3), iters=200).item(), 6)
    3.0
    """
    g = torch.Generator().manual_seed(seed)
    v0 = torch.randn(tuple(batch_shape), generator=g, dtype=DTYPE).to(device)

    nd = v0.dim()

    def run(shift: Tensor | None) -> Tensor:
        v = v0 / batch_view(v0.flatten(1).norm(dim=1).clamp_min(1e-300), nd)
        lam = torch.zeros(v.shape[0], dtype=DTYPE, device=device)
        for _ in range(iters):
            w = hvp(v)
            if shift is not None:
                w = w - batch_view(shift, nd) * v
            lam = _bdot(v, w)
            n = w.flatten(1).norm(dim=1)
            ok = n > 0
            v = torch.where(batch_view(ok, nd), w / batch_view(torch.where(ok, n, 1.0), nd), v)
        return lam

    lam1 = run(None)
    if bool((lam1 < 0).any()):
        shift = torch.where(lam1 < 0, lam1, torch.zeros_like(lam1))
        lam2 = run(shift) + shift
        lam1 = torch.where(lam1 < 0, lam2, lam1)
    return lam1


# ----------------------------------------------------------------------------------------------------------
class Quadratic(Problem):
    """``L(x) = ½ xᵀAx`` with ``A = Q diag(eigenvalues) Qᵀ`` (``Q = I`` unless ``rotate``; a seeded random
    orthogonal matrix otherwise). Attributes ``A``, ``Q``, ``eigenvalues``, ``beta`` (λ_max), ``mu`` (λ_min).
    The minimizers are the null space of ``A`` (the origin when every eigenvalue is positive).

    >>> q = Quadratic([10.0, 1.0], rotate=True, seed=1)
    >>> q.beta, q.mu, round(q.sharpness(torch.zeros(2)).item(), 12)
    (10.0, 1.0, 10.0)
    """

    name = "quadratic"

    def __init__(self, eigenvalues: Sequence[float] | Tensor, rotate: bool = False, seed: int = 0) -> None:
        lam = torch.as_tensor(eigenvalues, dtype=DTYPE).flatten()
        if lam.numel() == 0 or not torch.isfinite(lam).all() or (lam < 0).any():
            raise ValueError("eigenvalues must be a non-empty sequence of finite numbers >= 0")
        d = lam.numel()
        self.shape = (d,)
        self.eigenvalues = lam
        if rotate:
            g = torch.Generator().manual_seed(seed)
            q, r = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=DTYPE))
            self.Q = q * torch.sign(torch.diagonal(r)).where(torch.diagonal(r) != 0, torch.ones(d, dtype=DTYPE))
        else:
            self.Q = torch.eye(d, dtype=DTYPE)
        self.A = (self.Q * lam) @ self.Q.T
        self.A = 0.5 * (self.A + self.A.T)
        self.rotated = bool(rotate)
        self.beta = float(lam.max())
        self.mu = float(lam.min())

    def _apply(self, v: Tensor) -> Tensor:
        return v @ self.A if self.rotated else v * self.eigenvalues

    def _loss(self, x: Tensor) -> Tensor:
        return 0.5 * (self._apply(x) * x).sum(1)

    def _grad(self, x: Tensor) -> Tensor:
        return self._apply(x)

    def _hvp(self, x: Tensor, v: Tensor) -> Tensor:
        return self._apply(v)

    def _sharpness(self, x: Tensor) -> Tensor:
        return torch.full((x.shape[0],), self.beta, dtype=DTYPE, device=x.device)

    def distance_to_minima(self, x: Tensor) -> Tensor:
        """Distance to the null space of ``A`` (``‖x‖`` when ``A`` is positive definite)."""
        xb, single = self._batch(x)
        z = (xb @ self.Q) * (self.eigenvalues > 0)
        return self._unbatch(z.norm(dim=1), single)

    def default_x0(self) -> Tensor:
        return torch.ones(self.shape, dtype=DTYPE)


class SmoothStronglyConvex(Problem):
    """A non-quadratic, μ-strongly convex, β-smooth loss with minimizer 0:

    ``L(x) = Σ_i a_i (z_i²/2 − c·log cosh z_i)``, ``z = Qᵀx`` (``Q = I`` unless ``rotate``), ``0 ≤ c < 1``.

    Why: each term has second derivative ``a_i (1 − c·sech² z_i) ∈ [a_i(1 − c), a_i)``, so the Hessian
    ``Q diag(a_i(1 − c sech² z_i)) Qᵀ`` has every eigenvalue in ``[μ, β]`` with ``μ = (1 − c)·min a`` and
    ``β = max a`` (a supremum, approached far from the minimizer). The curvature is *smallest* at the
    minimizer and grows to β at infinity, so the β-dependent thresholds of Theorem 1 bind far from 0.
    Attributes ``a``, ``c``, ``Q``, ``beta``, ``mu``.

    >>> p = SmoothStronglyConvex([4.0, 1.0], c=0.5)
    >>> p.beta, p.mu, p.sharpness(torch.zeros(2)).item()
    (4.0, 0.5, 2.0)
    """

    name = "smooth_strongly_convex"

    def __init__(
        self, a: Sequence[float] | Tensor = (10.0, 1.0), c: float = 0.5, rotate: bool = False, seed: int = 0
    ) -> None:
        a_t = torch.as_tensor(a, dtype=DTYPE).flatten()
        if a_t.numel() == 0 or not (a_t > 0).all() or not torch.isfinite(a_t).all():
            raise ValueError("a must be a non-empty sequence of finite numbers > 0")
        if not (0.0 <= c < 1.0):
            raise ValueError(f"c must be in [0, 1) (strong convexity needs c < 1), got {c!r}")
        d = a_t.numel()
        self.shape = (d,)
        self.a, self.c = a_t, float(c)
        self.Q = Quadratic(torch.ones(d), rotate=rotate, seed=seed).Q
        self.beta = float(a_t.max())
        self.mu = float((1.0 - c) * a_t.min())

    def _z(self, x: Tensor) -> Tensor:
        return x @ self.Q

    def _loss(self, x: Tensor) -> Tensor:
        z = self._z(x)
        az = z.abs()
        logcosh = az + torch.log1p(torch.exp(-2 * az)) - math.log(2.0)
        return (self.a * (0.5 * z * z - self.c * logcosh)).sum(1)

    def _grad(self, x: Tensor) -> Tensor:
        z = self._z(x)
        return (self.a * (z - self.c * torch.tanh(z))) @ self.Q.T

    def _curv(self, x: Tensor) -> Tensor:
        t = torch.tanh(self._z(x))
        return self.a * (1.0 - self.c * (1.0 - t * t))

    def _hvp(self, x: Tensor, v: Tensor) -> Tensor:
        return (self._curv(x) * (v @ self.Q)) @ self.Q.T

    def _sharpness(self, x: Tensor) -> Tensor:
        return self._curv(x).amax(1)

    def distance_to_minima(self, x: Tensor) -> Tensor:
        """``‖x‖`` (the minimizer is 0)."""
        xb, single = self._batch(x)
        return self._unbatch(xb.norm(dim=1), single)

    def default_x0(self) -> Tensor:
        return torch.ones(self.shape, dtype=DTYPE)


def _eig2_max(a: Tensor, b: Tensor, c: Tensor) -> Tensor:
    """Largest eigenvalue of the symmetric 2×2 matrices [[a, b], [b, c]]."""
    return 0.5 * (a + c) + torch.hypot(0.5 * (a - c), b)


class _ProductLoss(Problem):
    """A loss of the product ``xy`` of two scalars, minimal on the axes ``{x = 0} ∪ {y = 0}``."""

    def distance_to_minima(self, x: Tensor) -> Tensor:
        """Distance to the axes: ``min(|x|, |y|)``."""
        xb, single = self._batch(x)
        return self._unbatch(xb.abs().amin(1), single)


class ScalarFactorization(_ProductLoss):
    """``L(x, y) = ½ (xy)²`` (Theorem 2), shape ``(2,)``. Minima: the two axes; the flattest is the origin.

    Hessian ``[[y², 2xy], [2xy, x²]]`` (closed-form sharpness). Not globally smooth: USAM's perturbation
    ``ρ·xy·(y, x)`` grows cubically, which is what normalization prevents.

    >>> ScalarFactorization().grad(torch.tensor([1.0, 3.0])).tolist()
    [9.0, 3.0]
    """

    name = "scalar_factorization"
    shape = (2,)

    def _loss(self, x: Tensor) -> Tensor:
        return 0.5 * (x[:, 0] * x[:, 1]) ** 2

    def _grad(self, x: Tensor) -> Tensor:
        s = x[:, 0] * x[:, 1]
        return torch.stack([s * x[:, 1], s * x[:, 0]], 1)

    def _hvp(self, x: Tensor, v: Tensor) -> Tensor:
        p, q = x[:, 0], x[:, 1]
        return torch.stack([q * q * v[:, 0] + 2 * p * q * v[:, 1], 2 * p * q * v[:, 0] + p * p * v[:, 1]], 1)

    def _sharpness(self, x: Tensor) -> Tensor:
        p, q = x[:, 0], x[:, 1]
        return _eig2_max(q * q, 2 * p * q, p * p)

    def default_x0(self) -> Tensor:
        return torch.tensor([1.0, 3.0], dtype=DTYPE)


class SingleNeuron(_ProductLoss):
    """Single-neuron linear network ``L(x, y) = ℓ(xy)`` (Theorems 3–5), shape ``(2,)``.

    ``loss="logcosh"``: ``ℓ(s) = log cosh s`` (ℓ′ = tanh, ℓ″ = sech²); ``loss="sqrt"``: ``ℓ(s) = √(1 + s²)``
    (ℓ′ = s/√(1+s²), ℓ″ = (1+s²)^(−3/2)). Both are convex, even, 1-Lipschitz with ℓ″(0) = 1. Minima: the
    axes; at ``(0, y)`` the sharpness is ``y²`` (so plotting y² plots sharpness). ``ℓ(0)`` is subtracted so
    that ``L* = 0``.

    >>> p = SingleNeuron()
    >>> round(p.sharpness(torch.tensor([0.0, 3.0])).item(), 12)
    9.0
    """

    name = "single_neuron"
    shape = (2,)

    def __init__(self, loss: str = "logcosh") -> None:
        if loss not in ("logcosh", "sqrt"):
            raise ValueError(f"loss must be 'logcosh' or 'sqrt', got {loss!r}")
        self.ell = loss

    def _l(self, s: Tensor) -> Tensor:
        if self.ell == "logcosh":
            a = s.abs()
            return a + torch.log1p(torch.exp(-2 * a)) - math.log(2.0)
        return torch.sqrt(1 + s * s) - 1.0

    def _l1(self, s: Tensor) -> Tensor:
        if self.ell == "logcosh":
            return torch.tanh(s)
        return s / torch.sqrt(1 + s * s)

    def _l2(self, s: Tensor) -> Tensor:
        if self.ell == "logcosh":
            t = torch.tanh(s)
            return 1 - t * t
        return (1 + s * s) ** -1.5

    def _loss(self, x: Tensor) -> Tensor:
        return self._l(x[:, 0] * x[:, 1])

    def _grad(self, x: Tensor) -> Tensor:
        d = self._l1(x[:, 0] * x[:, 1])
        return torch.stack([d * x[:, 1], d * x[:, 0]], 1)

    def _hess(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        p, q = x[:, 0], x[:, 1]
        s = p * q
        d1, d2 = self._l1(s), self._l2(s)
        return d2 * q * q, d2 * p * q + d1, d2 * p * p

    def _hvp(self, x: Tensor, v: Tensor) -> Tensor:
        a, b, c = self._hess(x)
        return torch.stack([a * v[:, 0] + b * v[:, 1], b * v[:, 0] + c * v[:, 1]], 1)

    def _sharpness(self, x: Tensor) -> Tensor:
        return _eig2_max(*self._hess(x))

    def default_x0(self) -> Tensor:
        return torch.tensor([1.2, 3.1], dtype=DTYPE)


class PLManifold(Problem):
    """A PL, smooth, non-convex loss with a line of minima (Theorem 6): ``L(x, y) = ½ h(y) x²`` with
    ``h(y) = m + (M − m) tanh² y``, shape ``(2,)``.

    * Minima: the line ``{x = 0}``; sharpness there is ``h(y)``, flattest at ``y = 0`` (SAM drifts there,
      USAM stops where it lands).
    * PL everywhere with ``mu = m``: ``‖∇L‖² ≥ (h x)² = 2h·L ≥ 2m·L``.
    * Smooth on the strip ``|x| ≤ x_max`` with ``beta = M + 0.7698 (M − m) x_max + (M − m) x_max²``: the
      Hessian is ``[[h, h′x], [h′x, h″x²/2]]`` with ``|h′| ≤ 0.7698 (M − m)``, ``|h″| ≤ 2(M − m)``, and its
      largest |eigenvalue| is at most ``h + |h′x| + |h″|x²/2`` (Gershgorin). GD-like methods started inside
      the strip with a small step stay inside it (``|x|`` decreases).

    >>> p = PLManifold(m=1.0, M=4.0, x_max=1.0)
    >>> p.mu, round(p.beta, 4), p.sharpness(torch.tensor([0.0, 0.0])).item()
    (1.0, 9.3094, 1.0)
    """

    name = "pl_manifold"
    shape = (2,)

    def __init__(self, m: float = 1.0, M: float = 4.0, x_max: float = 1.0) -> None:
        self.m = number(m, "m", strict=True)
        self.M = number(M, "M", minimum=self.m)
        self.x_max = number(x_max, "x_max", strict=True)
        self.mu = self.m
        self.beta = self.M + 0.7698004 * (self.M - self.m) * self.x_max + (self.M - self.m) * self.x_max**2

    def h(self, y: Tensor) -> Tensor:
        """Sharpness along the minima line, ``m + (M − m) tanh² y``."""
        t = torch.tanh(y)
        return self.m + (self.M - self.m) * t * t

    def _hd(self, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        t = torch.tanh(y)
        s2 = 1 - t * t
        k = self.M - self.m
        return self.m + k * t * t, 2 * k * t * s2, 2 * k * s2 * (1 - 3 * t * t)

    def _loss(self, x: Tensor) -> Tensor:
        return 0.5 * self.h(x[:, 1]) * x[:, 0] ** 2

    def _grad(self, x: Tensor) -> Tensor:
        h, h1, _ = self._hd(x[:, 1])
        p = x[:, 0]
        return torch.stack([h * p, 0.5 * h1 * p * p], 1)

    def _hess(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        h, h1, h2 = self._hd(x[:, 1])
        p = x[:, 0]
        return h, h1 * p, 0.5 * h2 * p * p

    def _hvp(self, x: Tensor, v: Tensor) -> Tensor:
        a, b, c = self._hess(x)
        return torch.stack([a * v[:, 0] + b * v[:, 1], b * v[:, 0] + c * v[:, 1]], 1)

    def _sharpness(self, x: Tensor) -> Tensor:
        return _eig2_max(*self._hess(x))

    def distance_to_minima(self, x: Tensor) -> Tensor:
        """Distance to the line ``{x = 0}``: ``|x|``."""
        xb, single = self._batch(x)
        return self._unbatch(xb[:, 0].abs(), single)

    def default_x0(self) -> Tensor:
        return torch.tensor([0.9, 1.3], dtype=DTYPE)


class MatrixSensing(Problem):
    """Over-parameterized matrix sensing (Li, Ma, Zhang 2018): ``f(U) = (1/2m) Σ_i (⟨A_i, UUᵀ⟩ − y_i)²``.

    ``U ∈ ℝ^{d×d}`` (shape ``(d, d)``); ground truth ``X* = U*U*ᵀ`` with ``U* ∈ ℝ^{d×r}`` Gaussian scaled to
    spectral norm 1; ``A_i = (G_i + G_iᵀ)/2`` with i.i.d. N(0, 1) ``G_i``; ``y_i = ⟨A_i, X*⟩``; ``m = 5dr`` by
    default. Gradient ``(2/m) S U`` with ``S = Σ r_i A_i``; Hessian-vector product ``(2/m)(S′U + SV)`` with
    ``S′ = Σ ⟨A_i, UVᵀ + VUᵀ⟩ A_i``. Sharpness by batched power iteration on the hvp (``power_iters`` iterations,
    settable). Seeds: ``seed`` for the data.

    Every ``A_i`` and every matrix it meets (``UUᵀ``, ``UVᵀ + VUᵀ``) is symmetric, so the measurements are stored
    as their upper triangles, a ``[m, d(d+1)/2]`` matrix: ``⟨A_i, X⟩ = Σ_{j≤k} w_jk A_i[j,k] X[j,k]`` with ``w = 1``
    on the diagonal and 2 above it, and ``S`` is built from its triangle. The residuals of a whole batch are one
    matmul, and so is ``S``: half the memory and the arithmetic of the full ``[m, d²]`` layout (≈ 3.5× faster for
    E1's d = 100 and 7 configurations), the same sums in another order (gradients agree to ≈ 1e-15 relative).
    :attr:`A` gives the full ``[m, d²]`` matrix when asked.

    >>> p = MatrixSensing(d=6, r=2, seed=0)
    >>> p.shape, p.m, round(torch.linalg.matrix_norm(p.U_star, 2).item(), 12)
    ((6, 6), 60, 1.0)
    >>> bool(p.loss(p.U_full_star()) < 1e-25), p.init(0.5, batch=3).shape
    (True, torch.Size([3, 6, 6]))
    """

    name = "matrix_sensing"
    fusable = False

    def __init__(self, d: int = 100, r: int = 5, m: int | None = None, seed: int = 0, power_iters: int = 20) -> None:
        d = integer(d, "d", minimum=1)
        r = integer(r, "r", minimum=1, maximum=d)
        m = 5 * d * r if m is None else integer(m, "m", minimum=1)
        self.d, self.r, self.m, self.seed = d, r, m, seed
        self.shape = (d, d)
        self.power_iters = integer(power_iters, "power_iters", minimum=1)
        g = torch.Generator().manual_seed(seed)
        u = torch.randn(d, r, generator=g, dtype=DTYPE)
        self.U_star = u / torch.linalg.matrix_norm(u, 2)
        self.X_star = self.U_star @ self.U_star.T
        G = torch.randn(m, d, d, generator=g, dtype=DTYPE)
        self._rows, self._cols = torch.triu_indices(d, d)
        # the upper triangle of A_i = (G_i + G_iᵀ)/2, entry for entry as the full matrix would hold it
        self._A_tri = (0.5 * (G[:, self._rows, self._cols] + G[:, self._cols, self._rows])).contiguous()
        del G
        self._w = torch.where(self._rows == self._cols, 1.0, 2.0).to(DTYPE)
        self.y = self._inner(self.X_star.unsqueeze(0))[0]

    @property
    def A(self) -> Tensor:
        """The measurement matrices as a ``[m, d²]`` matrix (row ``i`` is ``A_i`` flattened), built on demand."""
        full = torch.zeros(self.m, self.d, self.d, dtype=DTYPE)
        full[:, self._rows, self._cols] = self._A_tri
        full[:, self._cols, self._rows] = self._A_tri
        return full.reshape(self.m, self.d * self.d)

    def _inner(self, M: Tensor) -> Tensor:
        """``⟨A_i, M_b⟩`` for a batch of symmetric ``M`` ``[B, d, d]``: shape ``[B, m]``."""
        return (M[:, self._rows, self._cols] * self._w) @ self._A_tri.T

    def U_full_star(self) -> Tensor:
        """A ``d×d`` global minimizer: ``[U*, 0]`` (so ``UUᵀ = X*``)."""
        out = torch.zeros(self.d, self.d, dtype=DTYPE)
        out[:, : self.r] = self.U_star
        return out

    def init(self, alpha: float, kind: str = "identity", seed: int = 0, batch: int | None = None) -> Tensor:
        """``U0 = α I`` (``kind="identity"``) or ``α·N(0, 1)/√d`` entries (``kind="random"``, seeded).

        ``batch=None`` gives shape ``(d, d)``; an int gives ``(batch, d, d)`` (independent random draws).
        """
        n = 1 if batch is None else int(batch)
        if kind == "identity":
            u = alpha * torch.eye(self.d, dtype=DTYPE).expand(n, self.d, self.d).clone()
        elif kind == "random":
            g = torch.Generator().manual_seed(seed)
            u = alpha * torch.randn(n, self.d, self.d, generator=g, dtype=DTYPE) / math.sqrt(self.d)
        else:
            raise ValueError(f"kind must be 'identity' or 'random', got {kind!r}")
        return u[0] if batch is None else u

    def default_x0(self) -> Tensor:
        return self.init(0.3, kind="identity")

    def residuals(self, U: Tensor) -> Tensor:
        """``r_i = ⟨A_i, UUᵀ⟩ − y_i`` for a batch ``[B, d, d]``: shape ``[B, m]``."""
        return self._inner(U @ U.transpose(1, 2)) - self.y

    def _S(self, r: Tensor) -> Tensor:
        """``Σ_i r_i A_i`` for a batch of residuals ``[B, m]``: shape ``[B, d, d]``."""
        tri = r @ self._A_tri
        S = torch.empty(r.shape[0], self.d, self.d, dtype=tri.dtype, device=tri.device)
        S[:, self._rows, self._cols] = tri
        S[:, self._cols, self._rows] = tri
        return S

    def _loss(self, x: Tensor) -> Tensor:
        r = self.residuals(x)
        return (r * r).sum(1) / (2 * self.m)

    def _grad(self, x: Tensor) -> Tensor:
        return (2.0 / self.m) * (self._S(self.residuals(x)) @ x)

    def _hvp(self, x: Tensor, v: Tensor) -> Tensor:
        r = self.residuals(x)
        uvt = x @ v.transpose(1, 2)
        dr = self._inner(uvt + uvt.transpose(1, 2))  # 2⟨A_i, UVᵀ⟩ = ⟨A_i, UVᵀ + VUᵀ⟩ (A_i symmetric)
        return (2.0 / self.m) * (self._S(dr) @ x + self._S(r) @ v)

    def recovery_error(self, U: Tensor) -> Tensor:
        """``‖UUᵀ − X*‖_F / ‖X*‖_F`` per configuration."""
        ub, single = self._batch(U)
        X = ub @ ub.transpose(1, 2)
        err = torch.linalg.matrix_norm(X - self.X_star) / torch.linalg.matrix_norm(self.X_star)
        return self._unbatch(err, single)

    def trace(self, U: Tensor) -> Tensor:
        """``Tr(UUᵀ) = ‖U‖_F²`` (proportional to the Hessian trace at an interpolating U)."""
        ub, single = self._batch(U)
        return self._unbatch((ub * ub).flatten(1).sum(1), single)
