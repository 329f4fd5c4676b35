"""GSAM (Zhuang et al., ICLR 2022): SAM's descent direction corrected by the surrogate gap.

Written as a user's variant would be: a :class:`~samkit.SAM` subclass that overrides the two public hooks and uses
``self.ops`` for its list operations.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from samkit._checks import number
from samkit.optim.groups import SAMGroup
from samkit.optim.sam import SAM

__all__ = ["GSAM", "DEFAULT_ALPHA"]

#: GSAM's α when none is given (Zhuang et al. 2022 use values in [0.01, 0.3])
DEFAULT_ALPHA = 0.1


class GSAM(SAM):
    r"""Surrogate Gap Guided SAM (GSAM; Zhuang et al., ICLR 2022, "Surrogate Gap Minimization Improves
    Sharpness-Aware Training").

    With ``g = ∇L(w)`` (first pass) and ``g_p = ∇L(w + ε)``, ``ε = ρ g/‖g‖`` (second pass), GSAM splits
    ``g`` into its component along ``g_p`` and the rest, ``g_⊥ = g − (⟨g, g_p⟩ / ‖g_p‖²) g_p``, and descends
    along ``d = g_p − α g_⊥`` (minimising the perturbed loss while ascending the surrogate gap orthogonally).
    ``α = 0`` is SAM. The paper schedules ρ with the learning rate: use :class:`~samkit.ProportionalRho`.
    Every other argument is :class:`~samkit.SAM`'s (any ``normalization``; the paper's is ``"l2"``).

    >>> import torch, samkit
    >>> opt = samkit.GSAM(torch.nn.Linear(2, 1).parameters(), torch.optim.SGD, rho=0.05, alpha=0.1, lr=0.1)
    >>> opt.alpha
    0.1
    """

    def __init__(
        self,
        params: Iterable[Any] | None,
        base_optimizer: type[Optimizer] | Optimizer,
        rho: float = 0.05,
        alpha: float = DEFAULT_ALPHA,
        **kwargs: Any,
    ) -> None:
        self.alpha = number(alpha, "alpha")
        self._first_grads: dict[Tensor, Tensor] = {}
        self._gsam_params: list[Tensor] = []
        super().__init__(params, base_optimizer, rho, **kwargs)

    def after_perturb(self, groups: Sequence[SAMGroup]) -> None:
        """Keep a copy of the first-pass gradient ``g`` of every perturbed parameter."""
        params = [p for group in groups for p in group.params]
        grads = [g for group in groups for g in group.grads]
        bufs = []
        for p, grad in zip(params, grads):
            buf = self._first_grads.get(p)
            if buf is None or buf.shape != p.shape or buf.dtype != grad.dtype:
                buf = self._first_grads[p] = torch.empty_like(grad)
            bufs.append(buf)
        self.ops.copy_(bufs, grads)
        self._gsam_params = params

    def before_base_step(self) -> None:
        """Replace ``g_p`` in ``.grad`` by ``d = g_p − α g_⊥``."""
        pairs = [(p.grad, self._first_grads[p]) for p in self._gsam_params if p.grad is not None]
        self._gsam_params = []
        if not pairs or self.alpha == 0.0:
            return
        gp = [a for a, _ in pairs]
        g = [b for _, b in pairs]
        dot = torch.stack([(a * b).sum() for a, b in zip(gp, g)]).sum()
        gp_norm = self.ops.norm(gp)
        coef = 0.0 if float(gp_norm) == 0.0 else float(dot / gp_norm.to(dot.dtype) ** 2)
        # d = g_p − α (g − coef g_p) = (1 + α coef) g_p − α g
        self.ops.mul_(gp, 1.0 + self.alpha * coef)
        self.ops.add_(gp, g, -self.alpha)
