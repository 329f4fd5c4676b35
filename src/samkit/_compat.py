"""Every torch internal samkit uses, in one place: resolved once at import, each with a fallback.

A torch upgrade that moves or drops one of these names no longer breaks samkit where it is used: the fallback
(public classes, or a pure-PyTorch loop that gives the same numbers) takes over, and :func:`check` names what is
missing (``tests/test_compat.py`` fails on it, so the move is seen at once).

* ``torch.utils._foreach_utils._group_tensors_by_device_and_dtype``: falls back to a Python loop grouping the
  indices by (device, dtype);
* ``torch._amp_foreach_non_finite_check_and_unscale_``: to a loop that unscales in the kernel's precision (the same
  bits);
* ``torch.nn.modules.batchnorm._BatchNorm``: to the public BatchNorm classes (SyncBatchNorm and the lazy ones too);
* ``torch.nn.modules.batchnorm._NormBase``: to the public BatchNorm and InstanceNorm classes;
* ``Optimizer._opt_called`` (what LR schedulers read): no fallback; set anyway (harmless), a scheduler may then warn.

The multi-tensor kernels ``torch._foreach_{norm,mul,mul_,add_,copy_}`` are called directly where they are used
(:mod:`samkit.core`, :mod:`samkit.optim.ops`), as ``torch.optim``'s own foreach implementations do; they are listed
by :func:`check` too, and ``foreach=False`` is the loop that needs none of them.

>>> all(check().values())
True
"""

from __future__ import annotations

import importlib
import types
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "Groups",
    "group_by_device_and_dtype",
    "non_finite_check_and_unscale_",
    "mark_stepped",
    "BATCHNORM_TYPES",
    "NORM_TYPES",
    "check",
]

#: tensors' indices grouped by (device, dtype): the unit of one fused multi-tensor kernel
Groups = dict[tuple[torch.device, torch.dtype], list[int]]

#: the attribute torch's LR schedulers read to tell that the optimizer stepped
OPT_CALLED = "_opt_called"
#: the multi-tensor kernels samkit calls directly (``foreach=True``)
FOREACH_KERNELS = ("_foreach_norm", "_foreach_mul", "_foreach_mul_", "_foreach_add_", "_foreach_copy_")


def _resolve(path: str) -> Any:
    """The object at the dotted ``path`` (module, then attribute), or None where this torch lacks it."""
    module, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return None


def _names_in(code: types.CodeType) -> Iterator[str]:
    """Every attribute or global name a code object (and the functions defined in it) refers to."""
    yield from code.co_names
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _names_in(const)


def _scheduler_reads_opt_called() -> bool:
    scheduler = getattr(torch.optim.lr_scheduler, "LRScheduler", None)
    init = getattr(scheduler, "__init__", None)
    return init is not None and hasattr(init, "__code__") and OPT_CALLED in set(_names_in(init.__code__))


# ---------------------------------------------------------------------------------------------- fallbacks
def py_group_by_device_and_dtype(tensors: Sequence[Tensor]) -> Groups:
    """The fallback of :func:`group_by_device_and_dtype`: the same groups, in Python."""
    groups: Groups = {}
    for i, t in enumerate(tensors):
        groups.setdefault((t.device, t.dtype), []).append(i)
    return groups


def py_non_finite_check_and_unscale_(tensors: Sequence[Tensor], found_inf: Tensor, inv_scale: Tensor) -> None:
    """The fallback of :func:`non_finite_check_and_unscale_`: the same numbers, tensor by tensor (the kernel
    multiplies in float32 for 16-bit tensors, in the tensor's dtype otherwise, and leaves the values alone when
    ``inv_scale`` is 1)."""
    inv = inv_scale.reshape(())
    unit = float(inv) == 1.0
    for t in tensors:
        found_inf.copy_(torch.maximum(found_inf, (~torch.isfinite(t)).any().to(found_inf.dtype)))
        if unit:
            continue
        if t.dtype in (torch.float16, torch.bfloat16):
            t.copy_(t.float() * inv.float())
        else:
            t.mul_(inv.to(t.dtype))


_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
_LAZY_BN = tuple(getattr(nn, f"LazyBatchNorm{d}d") for d in (1, 2, 3) if hasattr(nn, f"LazyBatchNorm{d}d"))
_IN = (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)
_LAZY_IN = tuple(getattr(nn, f"LazyInstanceNorm{d}d") for d in (1, 2, 3) if hasattr(nn, f"LazyInstanceNorm{d}d"))
#: the fallbacks of :data:`BATCHNORM_TYPES` and :data:`NORM_TYPES` (a direct subclass of the internal base class
#: that is none of these is missed)
PUBLIC_BATCHNORM_TYPES: tuple[type, ...] = _BN + _LAZY_BN
PUBLIC_NORM_TYPES: tuple[type, ...] = PUBLIC_BATCHNORM_TYPES + _IN + _LAZY_IN

# ---------------------------------------------------------------------------------------------- resolution
_GROUP = _resolve("torch.utils._foreach_utils._group_tensors_by_device_and_dtype")
_UNSCALE = _resolve("torch._amp_foreach_non_finite_check_and_unscale_")
_BATCHNORM = _resolve("torch.nn.modules.batchnorm._BatchNorm")
_NORM_BASE = _resolve("torch.nn.modules.batchnorm._NormBase")

#: every internal by name, and whether this torch has it
SYMBOLS: dict[str, bool] = {
    "torch.utils._foreach_utils._group_tensors_by_device_and_dtype": _GROUP is not None,
    "torch._amp_foreach_non_finite_check_and_unscale_": _UNSCALE is not None,
    "torch.nn.modules.batchnorm._BatchNorm": isinstance(_BATCHNORM, type),
    "torch.nn.modules.batchnorm._NormBase": isinstance(_NORM_BASE, type),
    f"torch.optim.Optimizer.{OPT_CALLED} (read by torch.optim.lr_scheduler.LRScheduler)": _scheduler_reads_opt_called(),
    **{f"torch.{name}": hasattr(torch, name) for name in FOREACH_KERNELS},
}

#: the classes whose running statistics SAM's ``model=`` keeps (every BatchNorm, SyncBatchNorm included)
BATCHNORM_TYPES: tuple[type, ...] = (_BATCHNORM,) if isinstance(_BATCHNORM, type) else PUBLIC_BATCHNORM_TYPES
#: the normalization layers with running statistics (BatchNorm and InstanceNorm)
NORM_TYPES: tuple[type, ...] = (_NORM_BASE,) if isinstance(_NORM_BASE, type) else PUBLIC_NORM_TYPES


def group_by_device_and_dtype(tensors: Sequence[Tensor]) -> Groups:
    """The indices of ``tensors`` grouped by (device, dtype), in order within a group (torch's grouping, in C++).

    >>> g = group_by_device_and_dtype([torch.ones(2), torch.ones(3, dtype=torch.float64), torch.ones(1)])
    >>> g[(torch.device("cpu"), torch.float32)], g[(torch.device("cpu"), torch.float64)]
    ([0, 2], [1])
    """
    if not tensors:
        return {}
    if _GROUP is None:
        return py_group_by_device_and_dtype(tensors)
    groups = _GROUP([list(tensors)], with_indices=True)
    return {key: list(idx) for key, (_, idx) in groups.items()}


def non_finite_check_and_unscale_(tensors: Sequence[Tensor], found_inf: Tensor, inv_scale: Tensor) -> None:
    """Multiply ``tensors`` (one device) by ``inv_scale`` in place and set ``found_inf`` to 1 where any holds an inf
    or NaN (``found_inf``, ``inv_scale``: 1-element float32 tensors on that device): the kernel behind
    ``GradScaler.unscale_``.

    >>> t, found = [torch.tensor([2.0, float("inf")])], torch.zeros(1)
    >>> non_finite_check_and_unscale_(t, found, torch.full((1,), 0.5)); found.item(), t[0].tolist()
    (1.0, [1.0, inf])
    """
    if _UNSCALE is None:
        py_non_finite_check_and_unscale_(tensors, found_inf, inv_scale)
    else:
        _UNSCALE(list(tensors), found_inf, inv_scale)


def mark_stepped(optimizer: torch.optim.Optimizer) -> None:
    """Tell the LR schedulers attached to ``optimizer`` that it stepped (for a step taken outside ``step()``, like
    :meth:`samkit.SAM.second_step`): otherwise a scheduler's first ``step()`` warns of the wrong call order."""
    setattr(optimizer, OPT_CALLED, True)


def check() -> dict[str, bool]:
    """Every torch internal samkit uses, by name, and whether this torch has it (False: samkit runs on the
    fallback; see the module docstring)."""
    return dict(SYMBOLS)
