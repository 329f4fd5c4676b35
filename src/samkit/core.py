"""The SAM / USAM perturbation rule, written once.

Every part of samkit that perturbs weights (the :class:`samkit.SAM` optimizer, the dynamics lab, the
training integrations) goes through the functions of this module, so the theory checks exercise the same
code that users train with.

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
(what the dynamics lab uses: an ``eps`` added to ``‖g‖`` stalls SAM's drift near minima).

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

import torch
from torch import Tensor

__all__ = [
    "NORMALIZATIONS",
    "resolve_lam",
    "check_rho",
    "global_norm",
    "batched_norm",
    "nonfinite",
    "unscale_",
    "perturbation_scale",
    "adaptive_scale",
    "perturbation",
    "batched_perturbation",
]

#: The accepted values of ``normalization``.
NORMALIZATIONS = ("l2", "none", "unified")


def check_rho(rho: float) -> float:
    """Return ``rho`` as a float after checking it is a finite number ``>= 0``."""
    if isinstance(rho, Tensor):
        if rho.numel() != 1:
            raise ValueError(f"rho must be a scalar, got a tensor of shape {tuple(rho.shape)}")
        rho = float(rho)
    if isinstance(rho, bool) or not isinstance(rho, (int, float)):
        raise ValueError(f"rho must be a number >= 0, got {rho!r}")
    if not math.isfinite(rho) or rho < 0:
        raise ValueError(f"rho must be a finite number >= 0, got {rho!r}")
    return float(rho)


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
        if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not (0.0 <= float(lam) <= 1.0):
            raise ValueError(f"lam must be a number in [0, 1], got {lam!r}")
        lam = float(lam)
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


def _combine_norms(norms: Tensor) -> Tensor:
    """Scale-safe L2 norm of a vector of non-negative norms (last axis)."""
    m = norms.amax(dim=-1, keepdim=True)
    safe = torch.where(m > 0, m, torch.ones_like(m))
    return (safe * torch.linalg.vector_norm(norms / safe, dim=-1, keepdim=True)).squeeze(-1)


def _norm_dtype(t: Tensor) -> torch.dtype:
    # norms are computed in at least float32 (fp16 / bf16 squares overflow or lose precision)
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def global_norm(tensors: Sequence[Tensor], *, foreach: bool = True) -> Tensor:
    """Global L2 norm of a list of tensors, computed scale-safely, as a 0-dim tensor.

    The fast path takes per-tensor norms (``torch._foreach_norm``) and combines them scale-safely.
    When that result overflows or may have underflowed (elements beyond ``sqrt(finfo.max)`` or below
    ``sqrt(finfo.tiny)``), every tensor is divided by the global max-abs first and the norm is taken
    again, so the answer is right over the whole floating-point range. A non-finite input gives a
    non-finite norm (inf or NaN), which callers use to detect bad gradients. The result has dtype
    float32 (float64 when any input is float64) and lives on the first tensor's device.

    >>> global_norm([torch.tensor([3e30]), torch.tensor([4e30])])
    tensor(5.0000e+30)
    """
    tensors = list(tensors)
    if not tensors:
        return torch.zeros(())
    dtypes = {t.dtype for t in tensors}
    dtype = torch.float64 if torch.float64 in dtypes else torch.float32
    exotic = not dtypes <= {torch.float32, torch.float64}
    device = tensors[0].device

    def per_tensor(ts: Sequence[Tensor], ord: float) -> Tensor:
        if foreach:
            src = [t if t.dtype in (torch.float32, torch.float64) else t.float() for t in ts] if exotic else ts
            norms = torch._foreach_norm(src, ord)
        else:
            norms = [torch.linalg.vector_norm(t, ord, dtype=_norm_dtype(t)) for t in ts]
        try:
            stacked = torch.stack(norms)  # promotes to float64 when any input is float64
        except RuntimeError:  # tensors on several devices
            stacked = torch.stack([n.to(device) for n in norms])
        return stacked.to(dtype)

    total = _combine_norms(per_tensor(tensors, 2.0))
    finfo = torch.finfo(dtype)
    value = float(total)
    if math.isfinite(value) and value > math.sqrt(finfo.tiny) / finfo.eps:
        return total
    # Slow, exact path: rescale by the global max-abs first.
    amax = per_tensor(tensors, math.inf).amax()
    if not torch.isfinite(amax) or float(amax) == 0.0:
        return amax if not torch.isfinite(amax) else total
    scaled = [t.to(dtype) / amax.to(t.device) for t in tensors]
    return amax * _combine_norms(per_tensor(scaled, 2.0))


def _check_and_scale_(tensors: Sequence[Tensor], inv_scale: float, device: torch.device) -> Tensor:
    flag = torch.zeros(1, device=device, dtype=torch.float32)  # the kernel wants float32 (any default dtype)
    inv = torch.full((1,), inv_scale, device=device, dtype=torch.float32)
    torch._amp_foreach_non_finite_check_and_unscale_(list(tensors), flag, inv)
    return flag


def unscale_(tensors: Sequence[Tensor], inv_scale: float, *, foreach: bool = True) -> bool:
    """Multiply every tensor by ``inv_scale`` in place; return True when any holds an inf or NaN.

    One fused pass per device on the foreach path (``torch._amp_foreach_non_finite_check_and_unscale_``,
    the kernel behind ``GradScaler.unscale_``). With ``inv_scale=1.0`` the values are unchanged.

    >>> g = [torch.tensor([2.0, 4.0])]
    >>> unscale_(g, 0.5), g[0].tolist()
    (False, [1.0, 2.0])
    """
    tensors = list(tensors)
    if not tensors:
        return False
    if not foreach:
        found = False
        for t in tensors:
            found = found or not bool(torch.isfinite(t).all())
            if inv_scale != 1.0:
                t.mul_(inv_scale)
        return found
    flags = None
    if inv_scale == 1.0:
        # A pure check: try one fused call (all tensors on one device, the usual case). Should the kernel stop
        # part way on a device mismatch, the tensors it did touch were multiplied by exactly 1.
        try:
            flags = [_check_and_scale_(tensors, 1.0, tensors[0].device)]
        except RuntimeError:
            flags = None
    if flags is None:
        by_device: dict[torch.device, list[Tensor]] = {}
        for t in tensors:
            by_device.setdefault(t.device, []).append(t)
        flags = [_check_and_scale_(ts, inv_scale, d) for d, ts in by_device.items()]
    found = False
    for flag in flags:
        found = found or bool(flag.item())
    return found


def nonfinite(tensors: Sequence[Tensor], *, foreach: bool = True) -> bool:
    """True when any tensor holds an inf or NaN (one fused check per device on the foreach path).

    >>> nonfinite([torch.ones(2), torch.tensor([1.0, float("nan")])]), nonfinite([torch.ones(2)])
    (True, False)
    """
    return unscale_(tensors, 1.0, foreach=foreach)


def batched_norm(x: Tensor, start_dim: int = 1) -> Tensor:
    """Scale-safe L2 norm of ``x`` over the dimensions from ``start_dim`` on (batched vectors).

    Used by the dynamics lab, where iterates are stacked along a leading batch axis. Always exact over
    the whole floating-point range (the rescaling by max-abs is always done; it is cheap there).

    >>> batched_norm(torch.tensor([[3e-200, 4e-200], [0.0, 0.0]], dtype=torch.float64)).tolist()
    [5e-200, 0.0]
    """
    flat = x.flatten(start_dim) if x.dim() > start_dim else x.unsqueeze(-1)
    m = flat.abs().amax(dim=-1, keepdim=True)
    safe = torch.where(m > 0, m, torch.ones_like(m))
    return (safe * torch.linalg.vector_norm(flat / safe, dim=-1, keepdim=True)).squeeze(-1)


def perturbation_scale(
    norm: Tensor | float,
    rho: Tensor | float,
    *,
    normalization: str = "l2",
    lam: float | None = None,
    eps: float = 1e-12,
) -> Tensor:
    """The coefficient ``c`` with ``ε = c · g`` (see the module docstring); broadcasts over batches.

    ``c = ρ ((1 − λ) + λ / (‖g‖ + eps))`` with λ from :func:`resolve_lam`; wherever ``‖g‖ = 0`` the
    normalized part is dropped (a zero gradient gives a zero perturbation, never NaN).

    >>> perturbation_scale(torch.tensor(2.0), 0.1, eps=0.0)
    tensor(0.0500)
    >>> perturbation_scale(torch.tensor(0.0), 0.1, eps=0.0)      # zero gradient: no NaN
    tensor(0.)
    """
    lam_v = resolve_lam(normalization, lam)
    if eps < 0 or not math.isfinite(eps):
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    norm = torch.as_tensor(norm)
    rho = torch.as_tensor(rho, dtype=norm.dtype, device=norm.device)
    if lam_v == 0.0:
        return rho * torch.ones_like(norm)
    positive = norm > 0
    inv = torch.where(positive, 1.0 / torch.where(positive, norm + eps, torch.ones_like(norm)), torch.zeros_like(norm))
    return rho * ((1.0 - lam_v) + lam_v * inv)


def batched_perturbation(
    g: Tensor,
    rho: Tensor | float,
    *,
    normalization: str = "l2",
    lam: float | None = None,
    eps: float = 0.0,
) -> Tensor:
    """The perturbation ``ε = c·g`` for a batch of iterates ``g`` of shape ``[B, *shape]`` (``rho``: ``[B]`` or scalar).

    The same rule as :func:`perturbation`, for the dynamics lab. With ``eps = 0`` (exact normalization) the
    normalized part is computed on ``ĝ = g / max|g|`` (``ρ ĝ/‖ĝ‖ = ρ g/‖g‖``), so a gradient whose norm is
    subnormal never overflows ``ρ/‖g‖``; a zero gradient gives a zero perturbation.

    >>> g = torch.tensor([[3e-320, 4e-320], [0.0, 0.0]], dtype=torch.float64)
    >>> batched_perturbation(g, torch.tensor([1.0, 1.0], dtype=torch.float64)).round(decimals=12).tolist()
    [[0.6, 0.8], [0.0, 0.0]]
    """
    nd = g.dim()
    rho = torch.as_tensor(rho, dtype=g.dtype, device=g.device).expand(g.shape[0])

    def bview(t: Tensor) -> Tensor:
        return t.view(-1, *([1] * (nd - 1)))

    lam_v = resolve_lam(normalization, lam)
    if lam_v == 0.0:  # USAM: c = ρ (the norm is not needed)
        return bview(perturbation_scale(torch.ones_like(rho), rho, normalization="none")) * g
    if eps > 0:
        c = perturbation_scale(batched_norm(g), rho, normalization=normalization, lam=lam, eps=eps)
        return bview(c) * g
    # exact normalization, scale-safe: ĝ = g / max|g| has max-abs 1 (or is 0), so its plain norm is exact
    s = g.flatten(1).abs().amax(1).clamp_min_(torch.finfo(g.dtype).tiny)
    ghat = g / bview(s)
    nhat = torch.linalg.vector_norm(ghat.flatten(1), dim=1)
    e = ghat.mul_(bview(perturbation_scale(nhat, rho * lam_v, normalization="l2", eps=0.0)))
    if lam_v < 1.0:
        e = e.add_(bview(perturbation_scale(torch.ones_like(rho), rho * (1.0 - lam_v), normalization="none")) * g)
    return e


def adaptive_scale(param: Tensor, adaptive_eta: float = 0.01) -> Tensor:
    """ASAM's elementwise scaling ``T_w = |w| + adaptive_eta`` (Kwon et al. 2021, official ASAM)."""
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

    Without ``adaptive``: ``ε = c · g`` with ``c = perturbation_scale(‖g‖, ρ, ...)``.
    With ``adaptive=True`` (ASAM): ``T = |w| + adaptive_eta``, ``ε = c · T² g`` with ``c`` computed from
    ``‖T g‖``; ``params`` must then be given. SAM's ε has norm ρ; USAM's is ρ g.

    >>> e = perturbation([torch.tensor([1.0, 1.0])], rho=1.0, normalization="none")
    >>> e[0].tolist()
    [1.0, 1.0]
    """
    rho = check_rho(rho)
    grads = list(grads)
    if not grads:
        return []
    if adaptive:
        if params is None or len(params) != len(grads):
            raise ValueError("adaptive=True needs params, one per gradient")
        scales = [adaptive_scale(p, adaptive_eta) for p in params]
        tg = [s * g for s, g in zip(scales, grads)]
        c = perturbation_scale(global_norm(tg, foreach=foreach), rho, normalization=normalization, lam=lam, eps=eps)
        return [(s * t) * c.to(t.device, t.dtype) for s, t in zip(scales, tg)]
    c = perturbation_scale(global_norm(grads, foreach=foreach), rho, normalization=normalization, lam=lam, eps=eps)
    if foreach:
        return list(torch._foreach_mul(grads, [c.to(g.device, g.dtype) for g in grads]))
    return [g * c.to(g.device, g.dtype) for g in grads]
