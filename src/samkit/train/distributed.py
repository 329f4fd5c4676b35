"""The DDP context of a training run: world size, rank, device and the few collectives the loop needs.

Under ``torchrun`` (``WORLD_SIZE`` > 1) :class:`Dist` initializes the process group (gloo on CPU, NCCL on GPU) and
tears it down at the end; in a single process every helper is a no-op.

>>> d = Dist("cpu")
>>> d.on, d.world, d.rank, d.device
(False, 1, 0, device(type='cpu'))
>>> d.sum(torch.ones(2)).tolist()
[1.0, 1.0]
"""

from __future__ import annotations

import gc
import os

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

__all__ = ["Dist"]


class Dist:
    """World size, rank and device of this process, and small all-reduce helpers (no-ops in a single process)."""

    def __init__(self, device: str = "auto") -> None:
        self.owned = False
        world = int(os.environ.get("WORLD_SIZE", "1"))
        use_cuda = torch.cuda.is_available() and device != "cpu"
        if world > 1 and dist.is_available() and not dist.is_initialized():
            dist.init_process_group("nccl" if use_cuda else "gloo")
            self.owned = True
        self.on = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        self.world = dist.get_world_size() if self.on else 1
        self.rank = dist.get_rank() if self.on else 0
        self.is_main = self.rank == 0
        self.device = torch.device("cpu")
        if self.on and dist.get_backend() == "nccl":
            local = int(os.environ.get("LOCAL_RANK", "0"))
            torch.cuda.set_device(local)
            self.device = torch.device("cuda", local)
        elif not self.on and use_cuda:
            self.device = torch.device("cuda")

    def wrap(self, model: nn.Module) -> nn.Module:
        """``model`` in :class:`DistributedDataParallel` under DDP, else ``model`` itself."""
        if not self.on:
            return model
        return DistributedDataParallel(model, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        """The sum of ``t`` over all ranks, on the CPU (NCCL reduces CUDA tensors only: reduced on the device)."""
        if self.on:
            t = t.to(self.device, copy=True)
            dist.all_reduce(t)
            t = t.cpu()
        return t

    def barrier(self) -> None:
        if self.on:
            dist.barrier()

    def close(self) -> None:
        """Destroy the process group if this object created it."""
        if self.owned:
            gc.collect()  # free the DDP model (its reducer) before the process group: avoids a gloo teardown abort
            dist.barrier()
            dist.destroy_process_group()
