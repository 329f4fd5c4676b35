"""The SAM / USAM perturbation rule, written once.

Every part of samkit that perturbs weights (the :class:`samkit.SAM` optimizer, the dynamics lab, the
training integrations) goes through :func:`coefficients`, so the theory checks exercise the same code
that users train with.

The rule. With ``g`` the gradient (or, for ASAM, ``T g`` with ``T = |w| + adaptive_eta``), the
perturbation is ``ε = c · g`` (``ε = c · T² g`` for ASAM) where the scalar coefficient is

=================  =====================================  ============================
normalization      coefficient ``c``                      method
=================  =====================================  ============================
``"l2"``           ``ρ / ‖g‖``                            SAM (Foret et al. 2021)
``"none"``         ``ρ``                                  USAM (Andriushchenko & Flammarion 2022)
``"unified"``      ``ρ ((1 − λ) + λ / ‖g‖)``              unified SAM (Oikonomou & Loizou 2025)
=================  =====================================  ============================

``‖g‖`` is the global L2 norm over every tensor given (across all parameter groups), computed
scale-safely: no overflow or underflow for gradients whose squares leave the floating-point range.
``eps`` is added to the norm (``ρ / (‖g‖ + eps)``); a zero gradient always gives a zero perturbation
(never NaN), whatever ``eps`` is, so ``eps = 0`` gives exact normalization with a zero-gradient guard
(what the dynamics lab uses: an ``eps`` added to ``‖g‖`` stalls SAM's drift near minima). Where ``c``
itself would overflow (``‖g‖`` subnormal), the normalized part is taken on ``ĝ = g / max|g|`` instead:
``ε = c' · ĝ`` with ``c' = ρ ((1 − λ) s + λ / (‖ĝ‖ + eps / s))``, ``s = max|g|`` (see :func:`coefficients`).

Two layouts, one rule: :func:`perturb` takes parameter groups (lists of tensors, one global norm; what
:class:`samkit.SAM` calls), :func:`perturb_batched` takes a batch of iterates ``[B, *shape]`` (one norm per
row; what :func:`samkit.dynamics.simulate` calls). Neither checks its arguments: callers validate once
(``SAM.__init__``, ``simulate``). :func:`perturbation`, :func:`batched_perturbation` and
:func:`perturbation_scale` are the checked entry points for direct use.

Example:
    >>> import torch
    >>> from samkit.core import perturbation
    >>> g = [torch.tensor([3.0, 0.0]), torch.tensor([4.0])]
    >>> [e.tolist() for e in perturbation(g, rho=0.5)]          # SAM: ρ g / ‖g‖
    [[0.30000001192092896, 0.0], [0.4000000059604645]]
    >>> [e.tolist() for e in perturbation(g, rho=0.5, normalization="none")]   # USAM: ρ g
    [[1.5, 0.0], [2.0]]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from samkit._checks import batch_view, number
from samkit._compat import Groups, group_by_device_and_dtype

__all__ = [
    "NORMALIZATIONS",
    "resolve_lam",
    "check_rho",
    "global_norm",
    "batched_norm",
    "batched_norm_plain",
    "coefficients",
    "Perturbation",
    "perturb",
    "perturb_batched",
    "batched_coefficients",
    "perturbation_scale",
    "adaptive_scale",
    "perturbation",
    "batched_perturbation",
]

#: The accepted values of ``normalization``.
NORMALIZATIONS = ("l2", "none", "unified")


# ---------------------------------------------------------------------------------------------- argument checks
def check_rho(rho: float | Tensor) -> float:
    """Return ``rho`` as a float after checking it is a finite number ``>= 0`` (a one-element tensor is accepted).

    >>> check_rho(0.05)
    0.05
    """
    return number(rho, "rho", allow_tensor=True)


def resolve_lam(normalization: str, lam: float | None) -> float:
    """Map ``(normalization, lam)`` to the interpolation weight λ ∈ [0, 1] of the unified rule.

    ``"l2"`` is λ = 1 (SAM), ``"none"`` is λ = 0 (USAM), ``"unified"`` needs ``lam`` in [0, 1].
    Passing ``lam`` with ``"l2"`` or ``"none"`` is allowed only when it agrees (1 or 0).

    >>> resolve_lam("l2", None), resolve_lam("none", None), resolve_lam("unified", 0.25)
    (1.0, 0.0, 0.25)
    """
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"unknown normalization {normalization!r}; allowed: {', '.join(map(repr, NORMALIZATIONS))}")
    if lam is not None:
        lam = number(lam, "lam", maximum=1.0)
    if normalization == "unified":
        if lam is None:
            raise ValueError("normalization='unified' needs lam in [0, 1] (0 is USAM, 1 is SAM)")
        return lam
    fixed = 1.0 if normalization == "l2" else 0.0
    if lam is not None and lam != fixed:
        raise ValueError(
            f"lam={lam!r} contradicts normalization={normalization!r} (which means lam={fixed:g}); "
            "use normalization='unified' to interpolate"
        )
    return fixed


# ---------------------------------------------------------------------------------------------- norms
def _max_scaled(x: Tensor, dim: int) -> tuple[Tensor, Tensor]:
    """``(s, x / s)`` with ``s = max|x|`` along ``dim`` (kept; 1 where ``x`` is all zero): ``x / s`` has max-abs 1
    (or is 0), so its plain norm neither overflows nor underflows."""
    m = x.abs().amax(dim=dim, keepdim=True)
    s = torch.where(m > 0, m, torch.ones_like(m))
    return s, x / s


def _scaled_norm(x: Tensor, dim: int = -1) -> Tensor:
    """The max-scaled L2 norm ``s · ‖x / s‖`` along ``dim``: exact over the whole floating-point range."""
    s, xs = _max_scaled(x, dim)
    return (s * torch.linalg.vector_norm(xs, dim=dim, keepdim=True)).squeeze(dim)


def _exact_floor(dtype: torch.dtype) -> float:
    """A plain L2 norm above this (and finite) lost nothing to underflowing squares; at or below it, rescale."""
    finfo = torch.finfo(dtype)
    return math.sqrt(finfo.tiny) / finfo.eps


def _norm_dtype(t: Tensor) -> torch.dtype:
    # norms are computed in at least float32 (fp16 / bf16 squares overflow or lose precision)
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _per_tensor_norms(
    tensors: Sequence[Tensor],
    ord: float,
    dtype: torch.dtype,
    foreach: bool,
    groups: Groups | None = None,
) -> Tensor:
    """The ``ord``-norm of each tensor, as one vector of ``dtype`` on the first tensor's device (``groups``: the
    tensors' grouping by device and dtype, when known)."""
    device = tensors[0].device
    if not foreach:
        norms = [torch.linalg.vector_norm(t, ord, dtype=_norm_dtype(t)) for t in tensors]
    else:
        groups = group_by_device_and_dtype(tensors) if groups is None else groups
        if len(groups) == 1:
            (((_, kind), _),) = groups.items()
            src = tensors if kind in (torch.float32, torch.float64) else [t.float() for t in tensors]
            norms = list(torch._foreach_norm(list(src), ord))
        else:
            norms = [torch.zeros(())] * len(tensors)
            for (_, kind), idx in groups.items():
                src = [tensors[i] if kind in (torch.float32, torch.float64) else tensors[i].float() for i in idx]
                for i, n in zip(idx, torch._foreach_norm(src, ord)):
                    norms[i] = n.to(device)
    return torch.stack(norms).to(dtype)  # stack promotes to float64 when any norm is float64


def _norm_dtype_of(groups: Groups) -> torch.dtype:
    return torch.float64 if any(kind == torch.float64 for _, kind in groups) else torch.float32


class _Norm(NamedTuple):
    total: Tensor  # the global norm, 0-dim
    rescaled: bool  # the plain total was out of range: the slow, exact path was taken
    finite: bool  # the total is finite (no inf or NaN in the input, no overflow)
    value: float  # ``total`` as a Python float (the one host read of the fast path)


def _global_norm(tensors: Sequence[Tensor], foreach: bool, groups: Groups | None = None) -> _Norm:
    """The global norm of a non-empty list and how it was computed (see :func:`global_norm`)."""
    groups = group_by_device_and_dtype(tensors) if groups is None else groups
    dtype = _norm_dtype_of(groups)
    # per-tensor norms combined scale-safely. (A single reduction over a flat copy is twice as fast for lists of
    # small CPU tensors, 0.23 ms against 0.47 ms for 200 tensors of 4 160 entries, but rounds differently: every
    # SAM trajectory would change in its last bits, and a chaotic one visibly. Kept as it was.)
    total = _scaled_norm(_per_tensor_norms(tensors, 2.0, dtype, foreach, groups))
    value = float(total)
    if math.isfinite(value) and value > _exact_floor(dtype):
        return _Norm(total, False, True, value)
    # Slow, exact path: rescale by the global max-abs first.
    amax = _per_tensor_norms(tensors, math.inf, dtype, foreach, groups).amax()
    if not math.isfinite(float(amax)):
        return _Norm(amax, False, False, float(amax))
    if float(amax) == 0.0:
        return _Norm(total, False, True, value)
    norms = _per_tensor_norms([t.to(dtype) / amax.to(t.device) for t in tensors], 2.0, dtype, foreach, groups)
    total = amax * _scaled_norm(norms)
    return _Norm(total, True, math.isfinite(float(total)), float(total))


def global_norm(tensors: Sequence[Tensor], *, foreach: bool = True) -> Tensor:
    """Global L2 norm of a list of tensors, computed scale-safely, as a 0-dim tensor.

    The fast path takes per-tensor norms (``torch._foreach_norm``, one call per device and dtype) and combines
    them scale-safely. When that result overflows or may have underflowed (elements beyond ``sqrt(finfo.max)`` or
    below ``sqrt(finfo.tiny)``), every tensor is divided by the global max-abs first and the norm is taken again, so
    the answer is right over the whole floating-point range. A non-finite input gives a non-finite norm (inf or
    NaN), which callers use to detect bad gradients. The result has dtype float32 (float64 when any input is
    float64) and lives on the first tensor's device.

    >>> global_norm([torch.tensor([3e30]), torch.tensor([4e30])])
    tensor(5.0000e+30)
    """
    tensors = list(tensors)
    if not tensors:
        return torch.zeros(())
    return _global_norm(tensors, foreach).total


def batched_norm(x: Tensor, start_dim: int = 1) -> Tensor:
    """Scale-safe L2 norm of ``x`` over the dimensions from ``start_dim`` on (batched vectors).

    Used by the dynamics lab, where iterates are stacked along a leading batch axis. The policy of
    :func:`global_norm`, row by row: the plain norm, and the max-scaled one for the rows where the plain norm is out
    of range; so a row's norm is ``global_norm([row])`` bit for bit, exact over the whole floating-point range.

    >>> batched_norm(torch.tensor([[3e-200, 4e-200], [0.0, 0.0]], dtype=torch.float64)).tolist()
    [5e-200, 0.0]
    """
    flat = _rows(x, start_dim)
    plain, exact = batched_norm_plain(flat)
    redo = exact < 1
    if _traced() or bool(redo.any()):  # traced: no host read, both norms are computed and selected row by row
        plain = torch.where(redo, _scaled_norm(flat), plain)
    return plain


def batched_norm_plain(x: Tensor, start_dim: int = 1) -> tuple[Tensor, Tensor]:
    """The plain L2 norm of each row, and ``exact``: 1.0 where it is :func:`batched_norm`'s value bit for bit, 0.0
    where it is out of range (non-finite, or small enough for squares to underflow).

    The fast path of a fused step, which recomputes the flagged rows with :func:`batched_norm`. ``exact`` is a
    float mask, computed by comparisons and selections only: branch-free, and cheap in compiled code (where boolean
    algebra on masks is not).

    >>> n, exact = batched_norm_plain(torch.tensor([[3.0, 4.0], [3e-200, 4e-200]], dtype=torch.float64))
    >>> n[0].item(), exact.tolist()
    (5.0, [1.0, 0.0])
    """
    plain = torch.linalg.vector_norm(_rows(x, start_dim), dim=-1)
    return plain, _mask(plain > _exact_floor(plain.dtype), _mask(plain < math.inf, 1.0, plain), plain)


def _mask(cond: Tensor, yes: Tensor | float, like: Tensor) -> Tensor:
    """``yes`` where ``cond``, else 0, as a float mask of ``like``'s dtype and device."""
    zero = torch.zeros((), dtype=like.dtype, device=like.device)
    return torch.where(cond, yes if isinstance(yes, Tensor) else zero + yes, zero)


def _rows(x: Tensor, start_dim: int) -> Tensor:
    return x.flatten(start_dim) if x.dim() > start_dim else x.unsqueeze(-1)


def _traced() -> bool:
    """True while ``torch.compile`` traces the code: take the branch-free form of a data-dependent branch (the same
    numbers row by row: where the eager code skips a ``torch.where`` because no row needs it, the traced code selects
    the same values)."""
    return torch.compiler.is_compiling()


# ---------------------------------------------------------------------------------------------- the rule
def coefficients(norm: Tensor, rho: Tensor | float, lam: float, eps: float, scale: Tensor | float = 1.0) -> Tensor:
    """The rule: the coefficient ``c`` of ``ε = c · g / scale``, where ``norm = ‖g / scale‖``; broadcasts.

    ``c = ρ ((1 − λ) · scale + λ / (norm + eps / scale))``. With ``scale = 1`` (the usual case) that is
    ``c = ρ ((1 − λ) + λ / (‖g‖ + eps))``; ``scale = max|g|`` gives the same ε where ``ρ / ‖g‖`` would overflow (a
    subnormal ``‖g‖``). Wherever ``norm = 0`` the normalized part is dropped (a zero gradient gives a zero
    perturbation, never NaN). ``lam`` is the resolved λ (:func:`resolve_lam`); nothing is checked here (callers
    check once). :func:`perturb` (the optimizer) and :func:`perturb_batched` (the dynamics lab) both call it.

    >>> coefficients(torch.tensor([2.0, 0.0]), 0.1, lam=1.0, eps=0.0)      # SAM; a zero gradient: no NaN
    tensor([0.0500, 0.0000])
    """
    norm = torch.as_tensor(norm)
    rho = torch.as_tensor(rho, dtype=norm.dtype, device=norm.device)
    if lam == 0.0:  # USAM: c = ρ (the norm is not needed)
        return rho * (scale * torch.ones_like(norm))
    norm_eps = norm
    if eps > 0 and isinstance(scale, Tensor):  # (a Python number over a tensor is a product with 1/scale: inf)
        norm_eps = norm + torch.tensor(eps, dtype=norm.dtype, device=norm.device) / scale
    elif eps > 0:
        norm_eps = norm + eps / scale
    positive = norm > 0
    inv = torch.where(positive, 1.0 / torch.where(positive, norm_eps, 1.0), 0.0)
    return rho * ((1.0 - lam) * scale + lam * inv)


def _mul(a: Sequence[Tensor], b: Sequence[Tensor], foreach: bool) -> list[Tensor]:
    if foreach:
        return list(torch._foreach_mul(list(a), list(b)))
    return [x * y for x, y in zip(a, b)]


class Perturbation(NamedTuple):
    """What :func:`perturb` returns: in group ``k``, ``ε = coefficients[k] · directions[k]``."""

    #: per group, the tensors ``d`` with ``ε = c · d``: ``g`` (``T² g`` in an ASAM group), divided by the global
    #: max-abs of the normed vectors where ``c`` would otherwise overflow. Empty when not ``finite``.
    directions: list[list[Tensor]]
    #: per group, the coefficient ``c`` as a Python float (for ``add_(d, alpha=c)``). Empty when not ``finite``.
    coefficients: list[float]
    #: ``‖g‖``: the global norm over every group (of ``T g`` in ASAM groups), a 0-dim tensor.
    grad_norm: Tensor
    #: ``‖ε‖``, a 0-dim tensor (``grad_norm`` when not ``finite``).
    norm: Tensor
    #: False when ``‖g‖`` is not finite (a gradient holds inf or NaN): then there is no perturbation.
    finite: bool


def perturb(
    grads: Sequence[Sequence[Tensor]],
    rho: Sequence[float],
    lam: float,
    eps: float,
    *,
    scales: Sequence[Sequence[Tensor] | None] | None = None,
    foreach: bool = True,
    groups: Groups | None = None,
) -> Perturbation:
    """The perturbation for parameter groups: ``grads[k]`` the (non-empty) gradient list of group ``k``, ``rho[k]``
    its ρ; what :class:`samkit.SAM` calls.

    One global norm ``‖g‖`` over every group and one coefficient per group (:func:`coefficients`). ``scales[k]``,
    when given, are group ``k``'s ASAM scales ``T`` (:func:`adaptive_scale`): the norm is then of ``T g`` and the
    direction is ``T² g``. ``lam`` is the resolved λ; ``rho`` and ``eps`` are checked numbers: nothing is checked
    here, and nothing is modified. ``groups``: the gradients of all groups in order, grouped by device and dtype
    (:func:`samkit.optim.ops.grouped`), when the caller knows it (it is the same every step for an optimizer). One
    host read: the norm (the coefficients are computed from it on the CPU).

    >>> p = perturb([[torch.tensor([3.0])], [torch.tensor([4.0])]], rho=[1.0, 2.0], lam=1.0, eps=0.0)
    >>> p.coefficients, p.grad_norm.item(), round(p.norm.item(), 6)     # c_k = ρ_k / 5; ‖ε‖ = ‖(0.6, 1.6)‖
    ([0.20000000298023224, 0.4000000059604645], 5.0, 1.708801)
    """
    scales = [None] * len(grads) if scales is None else list(scales)
    vecs = [list(g) if s is None else _mul(s, g, foreach) for g, s in zip(grads, scales)]
    flat = [v for vs in vecs for v in vs]
    if not flat:
        return Perturbation([[] for _ in vecs], [0.0] * len(vecs), torch.zeros(()), torch.zeros(()), True)
    norm = _global_norm(flat, foreach, groups)
    if not norm.finite:
        return Perturbation([], [], norm.total, norm.total, False)
    dtype, device = norm.total.dtype, norm.total.device
    # the coefficients from the norm already read to the host: computed on the CPU, no second device read
    rhos = torch.tensor(list(rho), dtype=dtype)
    c = coefficients(torch.tensor(norm.value, dtype=dtype), rhos, lam, eps)
    cs = c.tolist()
    rescaled = norm.rescaled
    if not all(map(math.isfinite, cs)):  # ρ/‖g‖ overflows (a subnormal ‖g‖): the same ε on g / max|g|
        m = _per_tensor_norms(flat, math.inf, dtype, foreach).amax()
        vecs = [[v / m.to(v.device) for v in vs] for vs in vecs]
        total = _global_norm([v for vs in vecs for v in vs], foreach).total
        c = coefficients(total, rhos.to(device), lam, eps, scale=m)
        cs, rescaled = c.tolist(), True
    directions = [v if s is None else _mul(s, v, foreach) for v, s in zip(vecs, scales)]
    if len(directions) == 1 and scales[0] is None and not rescaled:  # ‖ε‖ = |c| ‖g‖
        return Perturbation(directions, cs, norm.total, norm.total * abs(cs[0]), True)
    # ‖ε‖ = ‖(|c_k| ‖d_k‖)_k‖
    c = c.to(device)
    d_norms = [global_norm(ds, foreach=foreach).to(device, dtype) for ds in directions]
    eps_norm = d_norms[0] * c.abs()[0] if len(d_norms) == 1 else _scaled_norm(c.abs() * torch.stack(d_norms))
    return Perturbation(directions, cs, norm.total, eps_norm, True)


def perturb_batched(g: Tensor, rho: Tensor | float, lam: float, eps: float) -> Tensor:
    """The perturbation ``ε = c·g`` for a batch of iterates ``g`` of shape ``[B, *shape]``, one norm per row; what
    :func:`samkit.dynamics.simulate` calls. ``rho``: ``[B]`` or a scalar.

    Row by row the same numbers as :func:`perturb` on that row alone (the same norm, :func:`coefficients` and, where
    ``ρ/‖g‖`` would overflow, the same rescaling by ``max|g|``). Nothing is checked (``lam`` resolved, ``eps >= 0``).

    >>> g = torch.tensor([[3e-320, 4e-320], [0.0, 0.0]], dtype=torch.float64)
    >>> perturb_batched(g, torch.tensor([1.0, 1.0], dtype=torch.float64), lam=1.0, eps=0.0).tolist()
    [[0.6000000000000001, 0.8], [0.0, 0.0]]
    """
    c, exact = batched_coefficients(g, rho, lam, eps)
    e = batch_view(c, g.dim()) * g
    if exact is not None:
        inexact = exact < 1
        if _traced() or bool(inexact.any()):
            e = torch.where(batch_view(inexact, g.dim()), _perturb_batched_exact(g, rho, lam, eps), e)
    return e


def batched_coefficients(g: Tensor, rho: Tensor | float, lam: float, eps: float) -> tuple[Tensor, Tensor | None]:
    """The fast path of :func:`perturb_batched`: the coefficient ``c`` of each row (``[B]``, from the plain norm) and
    ``exact``: 1.0 where ``c · g`` is :func:`perturb_batched`'s ε bit for bit, 0.0 where it is not (a norm out of
    range, or an overflowing coefficient); None where every row is exact (USAM, which needs no norm).

    A fused step runs this and recomputes the flagged steps with :func:`perturb_batched`. ``exact`` is a float mask
    (see :func:`batched_norm_plain`).

    >>> g = torch.tensor([[3.0, 4.0], [3e-320, 4e-320]], dtype=torch.float64)
    >>> c, exact = batched_coefficients(g, 1.0, lam=1.0, eps=0.0)
    >>> c[0].item(), exact.tolist()
    (0.2, [1.0, 0.0])
    """
    rho = torch.as_tensor(rho, dtype=g.dtype, device=g.device).expand(g.shape[0])
    if lam == 0:  # USAM: c = ρ, no norm, nothing to rescale
        return coefficients(torch.ones_like(rho), rho, lam, eps), None
    norm, exact = batched_norm_plain(g)
    c = coefficients(norm, rho, lam, eps)
    return c, _mask(c - c == 0, exact, exact)  # c - c == 0: c is finite


def _perturb_batched_exact(g: Tensor, rho: Tensor | float, lam: float, eps: float) -> Tensor:
    """:func:`perturb_batched` over the whole floating-point range (the scale-safe norm; where ``ρ/‖g‖`` overflows, the
    same ε from ``g / max|g|``)."""
    nd = g.dim()
    rho = torch.as_tensor(rho, dtype=g.dtype, device=g.device).expand(g.shape[0])
    c = coefficients(batched_norm(g), rho, lam, eps)
    bad = ~torch.isfinite(c)
    if _traced() or bool(bad.any()):  # ρ/‖g‖ overflows in some rows: there, ε = c' · g / max|g|
        s, ghat = _max_scaled(g.flatten(1), 1)
        s = s.squeeze(1)
        c = torch.where(bad, coefficients(torch.linalg.vector_norm(ghat, dim=1), rho, lam, eps, scale=s), c)
        g = torch.where(batch_view(bad, nd), ghat.reshape(g.shape), g)
    return batch_view(c, nd) * g


def perturbation_scale(
    norm: Tensor | float,
    rho: Tensor | float,
    *,
    normalization: str = "l2",
    lam: float | None = None,
    eps: float = 1e-12,
) -> Tensor:
    """The coefficient ``c`` with ``ε = c · g`` (see the module docstring); broadcasts over batches.

    :func:`coefficients` after checking the arguments: ``c = ρ ((1 − λ) + λ / (‖g‖ + eps))`` with λ from
    :func:`resolve_lam`; wherever ``‖g‖ = 0`` the normalized part is dropped (a zero gradient gives a zero
    perturbation, never NaN).

    >>> perturbation_scale(torch.tensor(2.0), 0.1, eps=0.0)
    tensor(0.0500)
    >>> perturbation_scale(torch.tensor(0.0), 0.1, eps=0.0)      # zero gradient: no NaN
    tensor(0.)
    """
    return coefficients(torch.as_tensor(norm), rho, resolve_lam(normalization, lam), number(eps, "eps"))


def batched_perturbation(
    g: Tensor,
    rho: Tensor | float,
    *,
    normalization: str = "l2",
    lam: float | None = None,
    eps: float = 0.0,
) -> Tensor:
    """The perturbation ``ε = c·g`` for a batch of iterates ``g`` of shape ``[B, *shape]`` (``rho``: ``[B]`` or scalar).

    :func:`perturb_batched` after checking the arguments. With ``eps = 0`` (exact normalization) a gradient whose
    norm is subnormal still gives ``ρ g/‖g‖`` (no overflow); a zero gradient gives a zero perturbation.

    >>> g = torch.tensor([[3e-320, 4e-320], [0.0, 0.0]], dtype=torch.float64)
    >>> batched_perturbation(g, torch.tensor([1.0, 1.0], dtype=torch.float64)).round(decimals=12).tolist()
    [[0.6, 0.8], [0.0, 0.0]]
    """
    return perturb_batched(g, rho, resolve_lam(normalization, lam), number(eps, "eps"))


def adaptive_scale(param: Tensor, adaptive_eta: float = 0.01) -> Tensor:
    """ASAM's elementwise scaling ``T_w = |w| + adaptive_eta`` (Kwon et al. 2021, official ASAM).

    >>> adaptive_scale(torch.tensor([-2.0, 0.0])).tolist()
    [2.009999990463257, 0.009999999776482582]
    """
    return param.detach().abs().add_(adaptive_eta)


def perturbation(
    grads: Sequence[Tensor],
    rho: float,
    *,
    normalization: str = "l2",
    lam: float | None = None,
    eps: float = 1e-12,
    params: Sequence[Tensor] | None = None,
    adaptive: bool = False,
    adaptive_eta: float = 0.01,
    foreach: bool = True,
) -> list[Tensor]:
    """The perturbation ε for a list of gradients (a new list; nothing is modified).

    :func:`perturb` on one group after checking the arguments. Without ``adaptive``: ``ε = c · g`` with
    ``c = perturbation_scale(‖g‖, ρ, ...)``. With ``adaptive=True`` (ASAM): ``T = |w| + adaptive_eta``,
    ``ε = c · T² g`` with ``c`` computed from ``‖T g‖``; ``params`` must then be given. SAM's ε has norm ρ; USAM's
    is ρ g. A gradient holding inf or NaN gives an all-NaN ε.

    >>> e = perturbation([torch.tensor([1.0, 1.0])], rho=1.0, normalization="none")
    >>> e[0].tolist()
    [1.0, 1.0]
    """
    rho = check_rho(rho)
    lam_v = resolve_lam(normalization, lam)
    eps = number(eps, "eps")
    grads = list(grads)
    scales = None
    if adaptive:
        if params is None or len(params) != len(grads):
            raise ValueError("adaptive=True needs params, one per gradient")
        eta = number(adaptive_eta, "adaptive_eta")
        scales = [[adaptive_scale(p, eta) for p in params]]
    if not grads:
        return []
    p = perturb([grads], [rho], lam_v, eps, scales=scales, foreach=foreach)
    if not p.finite:
        return [torch.full_like(g, math.nan) for g in grads]
    c, d = p.coefficients[0], p.directions[0]
    return list(torch._foreach_mul(d, c)) if foreach else [t * c for t in d]
