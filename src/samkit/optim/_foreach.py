"""In-place operations on lists of tensors: one multi-tensor (``torch._foreach_*``) kernel, or the single-tensor
reference loop that gives identical results (``foreach=False``)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["copy_", "add_", "mul_"]


def copy_(dst: Sequence[Tensor], src: Sequence[Tensor], foreach: bool) -> None:
    """``dst[i] ← src[i]``.

    >>> a = [torch.zeros(2)]
    >>> copy_(a, [torch.ones(2)], foreach=True); a[0].tolist()
    [1.0, 1.0]
    """
    if not dst:
        return
    if foreach:
        torch._foreach_copy_(list(dst), list(src))
    else:
        for d, s in zip(dst, src):
            d.copy_(s)


def add_(dst: Sequence[Tensor], other: Sequence[Tensor], alpha: float, foreach: bool) -> None:
    """``dst[i] ← dst[i] + alpha · other[i]``.

    >>> a = [torch.ones(2)]
    >>> add_(a, [torch.ones(2)], 0.5, foreach=False); a[0].tolist()
    [1.5, 1.5]
    """
    if not dst:
        return
    if foreach:
        torch._foreach_add_(list(dst), list(other), alpha=alpha)
    else:
        for d, o in zip(dst, other):
            d.add_(o, alpha=alpha)


def mul_(dst: Sequence[Tensor], factor: float, foreach: bool) -> None:
    """``dst[i] ← factor · dst[i]``.

    >>> a = [torch.ones(2)]
    >>> mul_(a, 3.0, foreach=True); a[0].tolist()
    [3.0, 3.0]
    """
    if not dst:
        return
    if foreach:
        torch._foreach_mul_(list(dst), factor)
    else:
        for d in dst:
            d.mul_(factor)
