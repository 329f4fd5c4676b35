"""The optimizer's plumbing on lists of tensors: the kernels chosen once, non-finite checks, the identity cache.

:func:`list_ops` picks, once, the implementation of every list operation an optimizer step needs: the multi-tensor
kernels (``torch._foreach_*``, one launch per device and dtype) or the single-tensor loop, which gives identical
numbers. :class:`samkit.SAM` keeps it as ``opt.ops``; a variant calls it as GSAM does. :class:`ListCache` is the
one cache of per-list work (the device/dtype layout, the backup buffers), recognised by the identity of the tensors.

>>> ops = list_ops(foreach=True)
>>> a = [torch.zeros(2)]
>>> ops.copy_(a, [torch.ones(2)]); ops.add_(a, [torch.ones(2)], 0.5); a[0].tolist()
[1.5, 1.5]
"""

from __future__ import annotations

import operator
from collections.abc import Sequence

import torch
from torch import Tensor

from samkit._compat import Groups, group_by_device_and_dtype, non_finite_check_and_unscale_
from samkit.core import Perturbation, global_norm, perturb

__all__ = [
    "ListOps",
    "ForeachOps",
    "list_ops",
    "ListCache",
    "grouped",
    "unscale_",
    "nonfinite",
    "backup_and_perturb",
    "Groups",
]


def grouped(tensors: Sequence[Tensor]) -> Groups:
    """Indices of ``tensors`` grouped by (device, dtype), the unit of one fused multi-tensor kernel. Callers that see
    the same layout every step (:class:`samkit.SAM`) compute it once and pass it as ``groups=`` to
    :func:`samkit.core.perturb`, :func:`unscale_` and :func:`nonfinite`.

    >>> g = grouped([torch.ones(2), torch.ones(3, dtype=torch.float64), torch.ones(1)])
    >>> g[(torch.device("cpu"), torch.float32)], g[(torch.device("cpu"), torch.float64)]
    ([0, 2], [1])
    """
    return group_by_device_and_dtype(list(tensors))


def unscale_(
    tensors: Sequence[Tensor], inv_scale: float, *, foreach: bool = True, groups: Groups | None = None
) -> bool:
    """Multiply every tensor by ``inv_scale`` in place; return True when any holds an inf or NaN.

    One fused pass per device and dtype on the foreach path (the kernel behind ``GradScaler.unscale_``) and one flag
    read per device. With ``inv_scale=1.0`` the values are unchanged. ``groups``: the tensors' :func:`grouped`, when
    the caller has it.

    >>> g = [torch.tensor([2.0, 4.0])]
    >>> unscale_(g, 0.5), g[0].tolist()
    (False, [1.0, 2.0])
    """
    return list_ops(foreach).unscale_(list(tensors), inv_scale, groups)


def nonfinite(tensors: Sequence[Tensor], *, foreach: bool = True, groups: Groups | None = None) -> bool:
    """True when any tensor holds an inf or NaN (one fused check per device and dtype on the foreach path).

    >>> nonfinite([torch.ones(2), torch.tensor([1.0, float("nan")])]), nonfinite([torch.ones(2)])
    (True, False)
    """
    return list_ops(foreach).unscale_(list(tensors), 1.0, groups)


class ListOps:
    """The single-tensor implementation: a Python loop of one-tensor operations (the reference, ``foreach=False``).

    Every method takes lists of tensors; ``dst`` is changed in place.
    """

    foreach = False

    def copy_(self, dst: Sequence[Tensor], src: Sequence[Tensor]) -> None:
        """``dst[i] ← src[i]``."""
        for d, s in zip(dst, src):
            d.copy_(s)

    def add_(self, dst: Sequence[Tensor], other: Sequence[Tensor], alpha: float) -> None:
        """``dst[i] ← dst[i] + alpha · other[i]``."""
        for d, o in zip(dst, other):
            d.add_(o, alpha=alpha)

    def mul_(self, dst: Sequence[Tensor], factor: float) -> None:
        """``dst[i] ← factor · dst[i]``."""
        for d in dst:
            d.mul_(factor)

    def norm(self, tensors: Sequence[Tensor]) -> Tensor:
        """The global L2 norm (:func:`samkit.core.global_norm`)."""
        return global_norm(tensors, foreach=self.foreach)

    def perturb(
        self,
        grads: Sequence[Sequence[Tensor]],
        rho: Sequence[float],
        lam: float,
        eps: float,
        scales: Sequence[Sequence[Tensor] | None],
        groups: Groups | None = None,
    ) -> Perturbation:
        """The rule on parameter groups (:func:`samkit.core.perturb`)."""
        return perturb(grads, rho, lam, eps, scales=scales, foreach=self.foreach, groups=groups)

    def unscale_(self, tensors: list[Tensor], inv_scale: float, groups: Groups | None = None) -> bool:
        """:func:`unscale_`: multiply by ``inv_scale`` in place, return True when any tensor holds an inf or NaN."""
        found = False
        for t in tensors:
            found = found or not bool(torch.isfinite(t).all())
            if inv_scale != 1.0:
                t.mul_(inv_scale)
        return found

    def nonfinite(self, tensors: list[Tensor], groups: Groups | None = None) -> bool:
        """:func:`nonfinite`: True when any tensor holds an inf or NaN."""
        return self.unscale_(tensors, 1.0, groups)


class ForeachOps(ListOps):
    """The multi-tensor implementation: one ``torch._foreach_*`` kernel per device and dtype (``foreach=True``)."""

    foreach = True

    def copy_(self, dst: Sequence[Tensor], src: Sequence[Tensor]) -> None:
        if dst:
            torch._foreach_copy_(list(dst), list(src))

    def add_(self, dst: Sequence[Tensor], other: Sequence[Tensor], alpha: float) -> None:
        if dst:
            torch._foreach_add_(list(dst), list(other), alpha=alpha)

    def mul_(self, dst: Sequence[Tensor], factor: float) -> None:
        if dst:
            torch._foreach_mul_(list(dst), factor)

    def unscale_(self, tensors: list[Tensor], inv_scale: float, groups: Groups | None = None) -> bool:
        flags: dict[torch.device, Tensor] = {}
        for (device, _), idx in (grouped(tensors) if groups is None else groups).items():
            if device not in flags:  # the kernel wants float32 flags (whatever the default dtype)
                flags[device] = torch.zeros(1, device=device, dtype=torch.float32)
            inv = torch.full((1,), inv_scale, device=device, dtype=torch.float32)
            non_finite_check_and_unscale_([tensors[i] for i in idx], flags[device], inv)
        return any(bool(flag.item()) for flag in flags.values())


_OPS = {False: ListOps(), True: ForeachOps()}


def list_ops(foreach: bool) -> ListOps:
    """The list operations of ``foreach``: :class:`ForeachOps` (True) or :class:`ListOps` (False), shared objects.

    >>> type(list_ops(True)).__name__, type(list_ops(False)).__name__
    ('ForeachOps', 'ListOps')
    """
    return _OPS[bool(foreach)]


def backup_and_perturb(
    ops: ListOps, cache: ListCache, params: Sequence[Sequence[Tensor]], rule: Perturbation
) -> tuple[list[Tensor], list[Tensor]]:
    """Back up each group's parameters (``params[k]``) into ``cache``'s buffers and add ``ε = c_k · d_k`` (``rule``);
    return the tensors changed and their backups, for the restore (the list path of :class:`samkit.SAM`).

    >>> p = [torch.zeros(2)]
    >>> rule = perturb([[torch.ones(2)]], [0.5], 0.0, 0.0)     # USAM: ε = 0.5 g
    >>> changed, saved = backup_and_perturb(list_ops(True), ListCache(), [p], rule)
    >>> p[0].tolist(), saved[0].tolist()
    ([0.5, 0.5], [0.0, 0.0])
    """
    changed: list[Tensor] = []
    saved: list[Tensor] = []
    for group, direction, c in zip(params, rule.directions, rule.coefficients):
        backups = cache.backups(group)
        ops.copy_(backups, group)
        ops.add_(group, direction, c)
        changed += group
        saved += backups
    return changed, saved


class _Entry:
    __slots__ = ("tensors", "layout", "backups")

    def __init__(self, tensors: list[Tensor]) -> None:
        self.tensors = tensors
        self.layout: Groups | None = None
        self.backups: list[Tensor] | None = None


class ListCache:
    """Per list of tensors, recognised by the identity of its tensors: its :func:`grouped` layout and its backup
    buffers. A steady training loop sees the same lists every step, so it does this work once; the backup buffer of
    each tensor is allocated once and reused by every list that holds the tensor.

    >>> cache, ts = ListCache(), [torch.ones(2), torch.ones(3)]
    >>> cache.backups(ts) is cache.backups(list(ts)), cache.layout(ts)
    (True, {(device(type='cpu'), torch.float32): [0, 1]})
    """

    def __init__(self) -> None:
        self._lists: dict[tuple[int, int, int], _Entry] = {}
        self._buffers: dict[Tensor, Tensor] = {}

    def _entry(self, tensors: Sequence[Tensor]) -> _Entry:
        key = (id(tensors[0]), id(tensors[-1]), len(tensors))
        entry = self._lists.get(key)
        if entry is None or not all(map(operator.is_, entry.tensors, tensors)):
            entry = self._lists[key] = _Entry(list(tensors))
        return entry

    def layout(self, tensors: Sequence[Tensor]) -> Groups:
        """:func:`grouped` of ``tensors``, computed once per list."""
        if not tensors:
            return {}
        entry = self._entry(tensors)
        if entry.layout is None:
            entry.layout = grouped(tensors)
        return entry.layout

    def backups(self, tensors: Sequence[Tensor]) -> list[Tensor]:
        """A persistent buffer like each tensor (allocated once per tensor, reused every step)."""
        if not tensors:
            return []
        entry = self._entry(tensors)
        if entry.backups is None:
            entry.backups = [self._buffer(t) for t in tensors]
        return entry.backups

    def _buffer(self, t: Tensor) -> Tensor:
        buf = self._buffers.get(t)
        if buf is None or buf.shape != t.shape or buf.dtype != t.dtype or buf.device != t.device:
            buf = self._buffers[t] = torch.empty_like(t, memory_format=torch.preserve_format)
        return buf
