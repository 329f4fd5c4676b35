"""SAM on sharded parameters: FSDP2 (``torch.distributed.fsdp.fully_shard``) and other ``DTensor`` layouts.

Under FSDP2 every parameter and gradient is a ``DTensor`` sharded on its device mesh (``Shard(0)``): each rank holds
a slice, and the gradient each rank sees after ``backward`` is its slice of the gradient *averaged over the ranks*
(FSDP2 reduce-scatters it). :class:`ShardedOps` (what :class:`samkit.SAM` uses as ``opt.ops`` when its parameters are
``DTensor``\\ s) does every list operation on the local slices (``DTensor.to_local()``, a view that writes through),
so the backup, ε and the exact in-place restore are those of the unsharded code, slice by slice. The one thing that
needs the other ranks is the norm ``‖g‖`` (and ``‖ε‖``): each rank takes the scale-safe norms of its slices
(:func:`samkit.core.global_norm`), one ``all_gather`` per pass collects these few numbers from every rank of the
sharded mesh dimension, and each rank combines them scale-safely (max-scaled, as :func:`~samkit.core.global_norm`
combines per-tensor norms): the same bits on every rank, so every rank takes the same branch (perturb, skip,
raise). The second pass's non-finite check is one ``all_reduce`` (max) of a flag.

What the two ``perturbation`` modes mean here:

* ``"global"``: ε from the gradient of the whole (global) batch, which is exactly what FSDP2's reduce-scattered
  gradient is: FSDP2 + ``perturbation="global"`` is single-process SAM on the global batch (to float rounding).
  Nothing more is communicated for the first pass than FSDP2's own reduce-scatter and the norm's ``all_gather``.
* ``"local"`` (each rank perturbs with its own batch's gradient, m-sharpness) is refused with a :class:`ValueError`:
  under FSDP2 a rank holds only a slice of the weights, and the next forward all-gathers the slices of every rank, so
  per-rank perturbations cannot be applied without a full unsharded copy of the weights per rank, which is what
  FSDP exists to avoid. (Skipping the reduce-scatter with ``set_requires_gradient_sync(False)`` only leaves each
  rank an unsharded gradient for a sharded weight.) Use ``perturbation="global"``.

``fused=True`` is refused too (its flat buffers are per device and dtype, not per shard). Gradient accumulation
(:meth:`samkit.SAM.step_accumulated`), ``model=`` BatchNorm statistics (FSDP2 does not shard buffers) and mixed
precision (``MixedPrecisionPolicy``: the sharded parameters and gradients stay in their own dtype) work unchanged.

Checkpoints: ``opt.state_dict()`` holds the base optimizer's ``DTensor`` state (save one file per rank), or, with
``torch.distributed.checkpoint`` (DCP), :func:`state_dict` and :func:`load_state_dict` put the model, the base
optimizer (``get_state_dict``/``set_state_dict``) and samkit's counters and rule in one dict::

    state = sharded.state_dict(model, opt)
    dcp.save(state, checkpoint_id=path)
    ...                                            # a fresh model and optimizer, same shapes
    state = sharded.state_dict(model, opt)         # the template DCP loads into
    dcp.load(state, checkpoint_id=path)
    sharded.load_state_dict(model, opt, state)

Without ``torch.distributed`` (or with no ``DTensor`` parameter) nothing here runs: :func:`sharded_ops` returns the
plain list operations.

>>> from samkit.optim.ops import list_ops
>>> ops = sharded_ops(list_ops(True), [{"params": [torch.nn.Parameter(torch.ones(2))]}], "local", fused=False)
>>> type(ops).__name__
'ForeachOps'
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from samkit.core import Perturbation, coefficients, global_norm
from samkit.optim.ops import Groups, ListOps

if TYPE_CHECKING:
    from samkit.optim.sam import SAM

__all__ = ["ShardedOps", "sharded_ops", "is_dtensor", "state_dict", "load_state_dict"]

#: the mesh dimensions a tensor is sharded over, with its mesh (None: a plain or replicated tensor)
_Key = Any


def _dtensor_type() -> type | None:
    """``DTensor``, when its module is loaded (no DTensor can exist before: nothing is imported for the check)."""
    module = sys.modules.get("torch.distributed.tensor")
    return getattr(module, "DTensor", None) if module is not None else None


def is_dtensor(t: Any) -> bool:
    """True when ``t`` is a ``torch.distributed.tensor.DTensor`` (an FSDP2 parameter or gradient)."""
    kind = _dtensor_type()
    return kind is not None and isinstance(t, kind)


def _local(t: Tensor) -> Tensor:
    """The local slice of a ``DTensor`` (a view: writes go through to the parameter), or ``t`` itself."""
    if not is_dtensor(t):
        return t
    with torch.no_grad():  # to_local() without grad is the local tensor itself
        return t.to_local()  # type: ignore[attr-defined,no-any-return]


def _locals(tensors: Sequence[Tensor]) -> list[Tensor]:
    return [_local(t) for t in tensors]


def _key(t: Tensor) -> _Key:
    """``(mesh, sharded mesh dims)`` of a DTensor sharded over some mesh dimension of size > 1, else None."""
    if not is_dtensor(t):
        return None
    mesh, placements = t.device_mesh, t.placements  # type: ignore[attr-defined]
    if any(p.is_partial() for p in placements):
        raise ValueError(
            "a gradient or parameter is a DTensor with a Partial placement (not yet reduced); samkit.SAM needs "
            "sharded or replicated tensors (as FSDP2 gives)"
        )
    dims = tuple(d for d, p in enumerate(placements) if p.is_shard() and mesh.size(d) > 1)
    return (mesh, dims) if dims else None


def _scaled_norm(x: Tensor, dim: int = 0) -> Tensor:
    """``s · ‖x / s‖`` along ``dim`` with ``s = max|x|`` (1 where all zero): the scale-safe L2 norm of norms."""
    m = x.abs().amax(dim=dim, keepdim=True)
    s = torch.where(m > 0, m, torch.ones_like(m))
    return (s * torch.linalg.vector_norm(x / s, dim=dim, keepdim=True)).squeeze(dim)


def _gather_norms(local: Tensor, key: _Key) -> Tensor:
    """Combine the vector of this rank's norms with every other rank's over the sharded mesh dimensions."""
    import torch.distributed as dist

    mesh, dims = key
    for d in dims:  # one all_gather per sharded mesh dimension (one for FSDP2)
        group = mesh.get_group(d)
        parts = [torch.empty_like(local) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, local.contiguous(), group=group)
        local = _scaled_norm(torch.stack(parts))
    return local


#: local slices with the layout of the tensors they came from: ``(local tensor, _key)`` pairs
_Laid = list[tuple[Tensor, _Key]]


def _lay(tensors: Iterable[Tensor]) -> _Laid:
    return [(_local(t), _key(t)) for t in tensors]


def _norms(lists: Sequence[_Laid], foreach: bool) -> Tensor:
    """The global L2 norm of each laid-out list, as one vector (one ``all_gather`` per mesh); the same on every rank."""
    parts: dict[_Key, list[list[Tensor]]] = {}
    for i, laid in enumerate(lists):
        for t, key in laid:
            parts.setdefault(key, [[] for _ in lists])[i].append(t)
    per_key = []
    for key, by_list in parts.items():
        local = torch.stack([global_norm(ts, foreach=foreach) for ts in by_list])
        per_key.append(local if key is None else _gather_norms(local, key))
    if not per_key:
        return torch.zeros(len(lists))
    return _scaled_norm(torch.stack([n.to(per_key[0].device) for n in per_key]))


def global_norms(lists: Sequence[Sequence[Tensor]], foreach: bool = True) -> Tensor:
    """The global L2 norm of each list of (possibly sharded) tensors, as one vector; one ``all_gather`` per mesh.

    Each rank computes the scale-safe norm of its local slices per list, the ranks' norms are gathered and
    combined scale-safely; a replicated or plain tensor counts once. Identical on every rank.

    >>> global_norms([[torch.tensor([3.0])], [torch.tensor([4.0]), torch.tensor([3.0])]]).tolist()
    [3.0, 5.0]
    """
    return _norms([_lay(ts) for ts in lists], foreach)


def _global_amax(laid: _Laid) -> Tensor:
    """max|t| over the tensors of ``laid`` and over the ranks of their meshes."""
    import torch.distributed as dist

    local = [t.abs().amax().double() if t.numel() else torch.zeros((), dtype=torch.float64) for t, _ in laid]
    value = torch.stack(local).amax()
    for mesh, dims in {id(k[0]): k for _, k in laid if k is not None}.values():
        value = value.to(mesh.device_type)
        for d in dims:
            dist.all_reduce(value, op=dist.ReduceOp.MAX, group=mesh.get_group(d))
    return value


def _any_rank(flag: bool, tensors: Sequence[Tensor]) -> bool:
    """``flag`` OR-ed over every rank of the meshes of ``tensors`` (one all_reduce per mesh dimension)."""
    import torch.distributed as dist

    meshes = {id(m): m for m in (t.device_mesh for t in tensors if is_dtensor(t))}  # type: ignore[attr-defined]
    for mesh in meshes.values():
        value = torch.tensor([float(flag)], device=mesh.device_type)
        for d in range(mesh.ndim):
            dist.all_reduce(value, op=dist.ReduceOp.MAX, group=mesh.get_group(d))
        flag = bool(value.item())
    return flag


class ShardedOps(ListOps):
    """:mod:`samkit.optim.ops`'s list operations for ``DTensor`` parameters: each on the local slices (by the
    wrapped ``inner`` operations); the norms and non-finite checks reduced over the ranks (see the module)."""

    def __init__(self, inner: ListOps) -> None:
        self.inner = inner
        self.foreach = inner.foreach  # type: ignore[misc]

    def copy_(self, dst: Sequence[Tensor], src: Sequence[Tensor]) -> None:
        self.inner.copy_(_locals(dst), _locals(src))

    def add_(self, dst: Sequence[Tensor], other: Sequence[Tensor], alpha: float) -> None:
        self.inner.add_(_locals(dst), _locals(other), alpha)

    def mul_(self, dst: Sequence[Tensor], factor: float) -> None:
        self.inner.mul_(_locals(dst), factor)

    def norm(self, tensors: Sequence[Tensor]) -> Tensor:
        return global_norms([tensors], self.foreach)[0]

    def unscale_(self, tensors: list[Tensor], inv_scale: float, groups: Groups | None = None) -> bool:
        return _any_rank(self.inner.unscale_(_locals(tensors), inv_scale), tensors)

    def nonfinite(self, tensors: list[Tensor], groups: Groups | None = None) -> bool:
        return self.unscale_(tensors, 1.0)

    def perturb(
        self,
        grads: Sequence[Sequence[Tensor]],
        rho: Sequence[float],
        lam: float,
        eps: float,
        scales: Sequence[Sequence[Tensor] | None],
        groups: Groups | None = None,
    ) -> Perturbation:
        """:func:`samkit.core.perturb` with the norms taken over every rank (one ``all_gather``)."""
        mul = self._mul
        vecs = [_lay(g) if s is None else _lay_like(mul(_locals(s), _locals(g)), g) for g, s in zip(grads, scales)]
        local_scales = [None if s is None else _locals(s) for s in scales]
        return _perturb(vecs, list(rho), lam, eps, local_scales, mul, self.foreach)

    def _mul(self, a: Sequence[Tensor], b: Sequence[Tensor]) -> list[Tensor]:
        if self.foreach:
            return list(torch._foreach_mul(list(a), list(b)))
        return [x * y for x, y in zip(a, b)]


def _lay_like(tensors: Sequence[Tensor], like: Sequence[Tensor]) -> _Laid:
    return [(t, _key(o)) for t, o in zip(tensors, like)]


def _perturb(
    vecs: list[_Laid],
    rho: list[float],
    lam: float,
    eps: float,
    scales: Sequence[Sequence[Tensor] | None],
    mul: Any,
    foreach: bool,
    scale: Tensor | None = None,
) -> Perturbation:
    """The rule of :func:`samkit.core.perturb` on the local slices ``vecs`` (``g``, or ``T g`` in ASAM groups),
    divided by ``scale`` (the global max|g|) on the path where ``ρ / ‖g‖`` would overflow."""
    directions = [[t for t, _ in v] if s is None else mul(s, [t for t, _ in v]) for v, s in zip(vecs, scales)]
    eps_norms = len(vecs) > 1 or scales[0] is not None or scale is not None  # ‖ε‖ from the ‖d_k‖
    lists = [[x for v in vecs for x in v]]
    if eps_norms:
        lists += [[(d, k) for d, (_, k) in zip(ds, v)] for ds, v in zip(directions, vecs)]
    norms = _norms(lists, foreach)
    total = norms[0]
    if not math.isfinite(float(total)):
        return Perturbation([], [], total, total, False)
    dtype = total.dtype
    rhos = torch.tensor(rho, dtype=dtype)
    if scale is None:
        c = coefficients(torch.tensor(float(total), dtype=dtype), rhos, lam, eps)
    else:
        c = coefficients(total.cpu(), rhos, lam, eps, scale=scale.to("cpu", dtype))
    cs = c.tolist()
    if scale is None and not all(map(math.isfinite, cs)):  # a subnormal ‖g‖: the same ε on g / max|g|
        m = _global_amax(lists[0]).to(dtype)
        scaled = [[(t / m.to(t.device), k) for t, k in v] for v in vecs]
        inner = _perturb(scaled, rho, lam, eps, scales, mul, foreach, scale=m)
        return Perturbation(inner.directions, inner.coefficients, total, inner.norm, True)
    if not eps_norms:  # ‖ε‖ = |c| ‖g‖
        return Perturbation(directions, cs, total, total * abs(cs[0]), True)
    eps_norm = _scaled_norm(c.abs().to(norms) * norms[1:])  # ‖ε‖ = ‖(|c_k| ‖d_k‖)_k‖
    return Perturbation(directions, cs, total if scale is None else total * scale.to(total), eps_norm, True)


def _sharded(param_groups: Iterable[Mapping[str, Any]]) -> bool:
    """True when some parameter is a DTensor sharded over a mesh dimension of more than one rank."""
    return any(_key(p) is not None for g in param_groups for p in g["params"])


def sharded_ops(ops: ListOps, param_groups: Iterable[Mapping[str, Any]], perturbation: str, fused: bool) -> ListOps:
    """The list operations for these parameters: ``ops``, or :class:`ShardedOps` over it when some are sharded
    ``DTensor``\\ s (FSDP2), where ``perturbation="local"`` and ``fused=True`` are refused (see the module)."""
    groups = list(param_groups)
    if not any(is_dtensor(p) for g in groups for p in g["params"]):
        return ops
    if _sharded(groups) and perturbation == "local":
        raise ValueError(
            "perturbation='local' is not supported with sharded parameters (FSDP2 fully_shard / DTensor): each rank "
            "holds only a slice of the weights, so per-rank perturbations would need a full copy of the weights on "
            "every rank. Use perturbation='global' (ε from the reduce-scattered gradient of the global batch: "
            "single-process SAM on the global batch); see docs/recipes/fsdp2.md"
        )
    if fused:
        raise ValueError("fused=True is not supported with DTensor (FSDP2) parameters; use fused=False")
    return ShardedOps(ops)


def state_dict(model: torch.nn.Module, opt: SAM) -> dict[str, Any]:
    """``{"model", "optim", "samkit"}``: the model's and the base optimizer's state dicts as
    ``torch.distributed.checkpoint.state_dict.get_state_dict`` gives them (sharded ``DTensor``\\ s, keyed by
    parameter name) and samkit's entry of :meth:`samkit.SAM.state_dict` (counters and rule): what to pass to
    ``torch.distributed.checkpoint.save``, and the template that ``torch.distributed.checkpoint.load`` fills."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    samkit_entry = opt.state_dict()["samkit"]  # (raises between first_step and second_step)
    model_sd, optim_sd = get_state_dict(model, opt.base_optimizer)
    return {"model": model_sd, "optim": optim_sd, "samkit": samkit_entry}


def load_state_dict(model: torch.nn.Module, opt: SAM, state: Mapping[str, Any]) -> None:
    """Load a :func:`state_dict` (filled by ``torch.distributed.checkpoint.load``) into ``model`` and ``opt``; the
    rule is checked as :meth:`samkit.SAM.load_state_dict` does, before anything changes."""
    from torch.distributed.checkpoint.state_dict import set_state_dict

    from samkit.optim import checkpoint

    counters = checkpoint._check_saved_rule(opt, state["samkit"])
    set_state_dict(model, opt.base_optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    opt.param_groups = opt.base_optimizer.param_groups
    for group in opt.param_groups:
        for key in opt.GROUP_KEYS:
            group.setdefault(key, opt.defaults[key])
    opt.steps, opt.skipped_steps, opt._calls = counters
