"""Helpers around the SAM optimizers' parameter groups: ρ that follows the learning rate, ASAM's groups, SAM-ON's
groups, and the checks :class:`samkit.SAM` makes on its groups when it is built."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.optim import Optimizer

from samkit._checks import number
from samkit._compat import NORM_TYPES
from samkit.core import check_rho

__all__ = ["SAMGroup", "ProportionalRho", "asam_param_groups", "sam_on_param_groups", "norm_layer_types"]


class SAMGroup(NamedTuple):
    """One parameter group's share of a SAM step, as the hook :meth:`samkit.SAM.after_perturb` sees it."""

    #: the group's parameters that have a gradient (at ``w + ε`` when the hook runs)
    params: list[Tensor]
    #: their first-pass gradients, in the same order
    grads: list[Tensor]
    #: the group's ρ this step
    rho: float
    #: ASAM's ``T = |w| + adaptive_eta`` per parameter, or None (plain SAM in this group)
    scales: list[Tensor] | None


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


def norm_layer_types() -> tuple[type, ...]:
    """The normalization layers: BatchNorm and InstanceNorm (:data:`samkit._compat.NORM_TYPES`), LayerNorm,
    GroupNorm, LocalResponseNorm and RMSNorm (where torch has it).

    >>> torch.nn.LayerNorm in norm_layer_types(), torch.nn.Linear in norm_layer_types()
    (True, False)
    """
    types: tuple[type, ...] = (*NORM_TYPES, torch.nn.LayerNorm, torch.nn.GroupNorm, torch.nn.LocalResponseNorm)
    if hasattr(torch.nn, "RMSNorm"):
        types = types + (torch.nn.RMSNorm,)
    return types


def asam_param_groups(
    model: torch.nn.Module, *, exclude_bias: bool = True, exclude_norm: bool = True, **group_kwargs: Any
) -> list[dict[str, Any]]:
    """Two parameter groups for ASAM: weights with ``adaptive=True``, the excluded ones with ``adaptive=False``.

    Excluded: biases (parameter names ending in ``bias``) and the parameters of normalization layers
    (:func:`norm_layer_types`: BatchNorm, LayerNorm, GroupNorm, InstanceNorm, LocalResponseNorm, RMSNorm).

    >>> import torch, samkit
    >>> m = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.LayerNorm(2))
    >>> [len(g["params"]) for g in samkit.asam_param_groups(m)]
    [1, 3]
    """
    norm_types = norm_layer_types()
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


def sam_on_param_groups(model: torch.nn.Module, **group_kwargs: Any) -> list[dict[str, Any]]:
    """SAM-ON's groups (Mueller et al., NeurIPS 2023, "Normalization Layers Are All That Sharpness-Aware Minimization
    Needs"): the affine parameters (weights and biases) of the normalization layers in a group that SAM perturbs,
    every other parameter in a group with ``perturb=False``.

    A ``perturb=False`` group is neither perturbed nor counted in ``‖g‖``: the perturbation is ``ε_S = ρ g_S/‖g_S‖``
    on the normalization parameters ``S`` and 0 elsewhere. That is not the same as ``rho=0`` on the other group,
    which leaves them unperturbed but keeps them in the norm (``ε_S = ρ g_S/‖g‖``, smaller by ``‖g_S‖/‖g‖``). Every
    parameter still takes the base step, with its gradient at the perturbed point. ``group_kwargs`` go to both groups
    (``lr``, ``weight_decay``, ...). Normalization layers: :func:`norm_layer_types`. A model without a normalization
    layer that has trainable affine parameters is a ValueError.

    >>> import torch, samkit
    >>> m = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.LayerNorm(2), torch.nn.Linear(2, 1))
    >>> [(len(g["params"]), g.get("perturb", True)) for g in samkit.sam_on_param_groups(m)]
    [(2, True), (4, False)]
    >>> samkit.sam_on_param_groups(torch.nn.Linear(2, 1))
    Traceback (most recent call last):
    ...
    ValueError: sam_on_param_groups: Linear has no normalization layer with trainable affine parameters (BatchNorm, LayerNorm, GroupNorm, InstanceNorm with affine=True, RMSNorm): SAM-ON would perturb nothing
    """
    norm_types = norm_layer_types()
    on: list[Tensor] = []
    off: list[Tensor] = []
    seen: set[int] = set()
    for module in model.modules():
        for p in module.parameters(recurse=False):
            if p.requires_grad and id(p) not in seen:  # a parameter shared by two modules goes in once
                seen.add(id(p))
                (on if isinstance(module, norm_types) else off).append(p)
    if not on:
        raise ValueError(
            f"sam_on_param_groups: {type(model).__name__} has no normalization layer with trainable affine "
            "parameters (BatchNorm, LayerNorm, GroupNorm, InstanceNorm with affine=True, RMSNorm): SAM-ON would "
            "perturb nothing"
        )
    groups = [{"params": on, **group_kwargs}]
    if off:
        groups.append({"params": off, **group_kwargs, "perturb": False})
    return groups


def check_group(group: dict[str, Any]) -> None:
    """Check the options :class:`samkit.SAM` adds to a parameter group (``rho``, ``adaptive_eta``, ``perturb``)."""
    check_rho(group["rho"])
    number(group["adaptive_eta"], "adaptive_eta")
    if not isinstance(group["perturb"], bool):
        raise TypeError(f"a parameter group's perturb must be True or False, got {group['perturb']!r}")


def check_some_perturbed(groups: list[dict[str, Any]]) -> None:
    """Refuse groups that all have ``perturb=False`` (SAM would take the base step at twice its cost)."""
    if groups and not any(g["perturb"] for g in groups):
        raise ValueError(
            "every parameter group has perturb=False: SAM would perturb nothing and take the base step at twice its "
            "cost; let at least one group be perturbed, or use the base optimizer"
        )


def check_built_base(params: Iterable[Any] | None, base: Optimizer, base_kwargs: dict[str, Any]) -> None:
    """With an already built base optimizer: no ``base_kwargs``, and ``params`` None or exactly its parameters."""
    if base_kwargs:
        raise ValueError(
            f"base_kwargs {sorted(base_kwargs)} given with an already built base optimizer; "
            "pass them to the base optimizer's constructor instead"
        )
    if params is None:
        return
    base_params = [p for g in base.param_groups for p in g["params"]]
    given: list[Tensor] = []
    for item in params:
        if isinstance(item, dict):
            given.extend(item["params"] if not isinstance(item["params"], Tensor) else [item["params"]])
        else:
            given.append(item)
    if {id(p) for p in given} != {id(p) for p in base_params} or len(given) != len(base_params):
        raise ValueError(
            "params must be the same parameters as the built base optimizer's "
            f"({len(given)} given, {len(base_params)} in the base optimizer); or pass params=None"
        )
