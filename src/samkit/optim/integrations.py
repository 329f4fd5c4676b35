"""What :class:`samkit.SAM` does for the model it trains: BatchNorm statistics and DDP.

* BatchNorm (``model=``): the running statistics (``running_mean``, ``running_var``, ``num_batches_tracked`` of every
  BatchNorm, SyncBatchNorm included) are saved after the first forward and put back with the weights, so they are
  those of the first pass: the second forward does not move them (right for ``momentum=None`` too).
* DDP: with a ``DistributedDataParallel`` model and ``perturbation="local"``, the first forward and backward run
  under ``model.no_sync()`` (each replica perturbs with its own gradient); with ``perturbation="global"`` the
  first-pass gradient is averaged over replicas, by DDP's own all-reduce or, for a model that is not DDP-wrapped in
  an initialized process group, by :func:`all_reduce_mean`.

>>> import samkit
>>> m = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
>>> [tuple(t.shape) for t in batchnorm_statistics(m)]
[(2,), (2,), ()]
>>> opt = samkit.SAM(m.parameters(), torch.optim.SGD, lr=0.1, model=m)
>>> with opt.first_pass():                          # model.no_sync() for a DDP model
...     m(torch.ones(4, 2)).sum().backward()
>>> opt.first_step(zero_grad=True)
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from samkit._compat import BATCHNORM_TYPES
from samkit.optim import sharded

__all__ = ["batchnorm_statistics", "first_pass_context", "all_reduce_mean"]

_STATS = ("running_mean", "running_var", "num_batches_tracked")


def batchnorm_statistics(model: torch.nn.Module | None) -> list[Tensor]:
    """The running statistics of every BatchNorm of ``model`` that tracks them (none when ``model`` is None)."""
    if model is None:
        return []
    out: list[Tensor] = []
    for m in model.modules():
        if isinstance(m, BATCHNORM_TYPES) and getattr(m, "track_running_stats", False):
            out.extend(b for b in (getattr(m, name, None) for name in _STATS) if b is not None)
    return out


def first_pass_context(model: torch.nn.Module | None, perturbation: str) -> Any:
    """``model.no_sync()`` for a DDP model with ``perturbation="local"``, else a context that does nothing."""
    if perturbation == "local" and isinstance(model, torch.nn.parallel.DistributedDataParallel):
        return model.no_sync()
    return contextlib.nullcontext()


def all_reduce_mean(model: torch.nn.Module | None, grads: Sequence[Tensor]) -> None:
    """Average ``grads`` over the ranks in place, unless DDP did (``model`` is DDP-wrapped) or there is one rank;
    ``DTensor`` gradients (FSDP2) are left alone: FSDP2's reduce-scatter already averaged them."""
    import torch.distributed as dist

    ddp = isinstance(model, torch.nn.parallel.DistributedDataParallel)
    if ddp or not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    world = dist.get_world_size()
    for grad in grads:
        if sharded.is_dtensor(grad):  # FSDP2 reduce-scattered it: already the mean (samkit.optim.sharded)
            continue
        dist.all_reduce(grad)
        grad.div_(world)
