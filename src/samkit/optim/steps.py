"""The state of one SAM step between its two halves: what :meth:`SAM.first_step <samkit.SAM.first_step>` did, for
:meth:`~samkit.SAM.second_step` (the restore, the skip decision, the norms it logs).

>>> s = StepState()
>>> s.skip, s.changed, s.grad_norm is None
(False, [], True)
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

__all__ = ["StepState"]


@dataclass
class StepState:
    """The per-step state: what first_step did, for second_step (``SAM._step``; the last one: ``SAM._last``)."""

    changed: list[Tensor] = field(default_factory=list)  # tensors perturbed in place (parameters, BN statistics)
    saved: list[Tensor] = field(default_factory=list)  # their values before
    skip: bool = False  # a non-finite gradient with on_nonfinite="skip", or a GradScaler overflow
    scaler_recorded: bool = False  # the GradScaler already recorded the overflow of the first pass
    grad_norm: Tensor | None = None  # ‖g‖ and ‖ε‖ (None: no norm, or no perturbation)
    perturbation_norm: Tensor | None = None
