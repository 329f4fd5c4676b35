"""Helpers around the SAM optimizers' parameter groups: ρ that follows the learning rate, ASAM's groups."""

from __future__ import annotations

from typing import Any

import torch
from torch.optim import Optimizer

from samkit._checks import number

__all__ = ["ProportionalRho", "asam_param_groups"]


class ProportionalRho:
    """Keep ``rho`` proportional to the learning rate: ``group["rho"] = ratio · group["lr"]``.

    Call :meth:`step` after your LR scheduler's ``step()``. The ratio defaults to each group's
    ``rho / lr`` at construction, so ρ follows any schedule of the learning rate.

    >>> import torch, samkit
    >>> opt = samkit.SAM(torch.nn.Linear(2, 1).parameters(), torch.optim.SGD, rho=0.05, lr=0.1)
    >>> follow = samkit.ProportionalRho(opt)           # ratio rho / lr = 0.5
    >>> opt.param_groups[0]["lr"] = 0.05                # what an LR scheduler does
    >>> follow.step()
    >>> round(opt.param_groups[0]["rho"], 6)
    0.025
    """

    def __init__(self, optimizer: Optimizer, ratio: float | None = None) -> None:
        self.optimizer = optimizer
        if ratio is not None:
            self.ratios = [number(ratio, "ratio")] * len(optimizer.param_groups)
        else:
            self.ratios = []
            for g in optimizer.param_groups:
                if float(g["lr"]) == 0:
                    raise ValueError("cannot infer rho/lr with lr = 0; pass ratio explicitly")
                self.ratios.append(float(g["rho"]) / float(g["lr"]))

    def step(self) -> None:
        """Set every group's ``rho`` to its ratio times its current ``lr``."""
        for ratio, g in zip(self.ratios, self.optimizer.param_groups):
            g["rho"] = ratio * float(g["lr"])

    def state_dict(self) -> dict[str, Any]:
        """The ratios, for a checkpoint."""
        return {"ratios": list(self.ratios)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the ratios saved by :meth:`state_dict`."""
        self.ratios = [float(r) for r in state["ratios"]]


def asam_param_groups(
    model: torch.nn.Module, *, exclude_bias: bool = True, exclude_norm: bool = True, **group_kwargs: Any
) -> list[dict[str, Any]]:
    """Two parameter groups for ASAM: weights with ``adaptive=True``, the excluded ones with ``adaptive=False``.

    Excluded: biases (parameter names ending in ``bias``) and the parameters of normalization layers
    (BatchNorm, LayerNorm, GroupNorm, InstanceNorm, LocalResponseNorm, RMSNorm).

    >>> import torch, samkit
    >>> m = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.LayerNorm(2))
    >>> [len(g["params"]) for g in samkit.asam_param_groups(m)]
    [1, 3]
    """
    norm_types: tuple[type, ...] = (
        torch.nn.modules.batchnorm._NormBase,
        torch.nn.LayerNorm,
        torch.nn.GroupNorm,
        torch.nn.LocalResponseNorm,
    )
    if hasattr(torch.nn, "RMSNorm"):
        norm_types = norm_types + (torch.nn.RMSNorm,)
    adaptive, plain = [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            if (exclude_norm and isinstance(module, norm_types)) or (exclude_bias and name.endswith("bias")):
                plain.append(p)
            else:
                adaptive.append(p)
    groups = []
    if adaptive:
        groups.append({"params": adaptive, "adaptive": True, **group_kwargs})
    if plain:
        groups.append({"params": plain, "adaptive": False, **group_kwargs})
    return groups
