"""PyTorch optimizers of the SAM family (SAM, USAM, unified SAM, ASAM, GSAM) and training helpers.

Modules: :mod:`~samkit.optim.sam` (the optimizer), :mod:`~samkit.optim.usam`, :mod:`~samkit.optim.gsam` (variants),
:mod:`~samkit.optim.groups` (parameter groups: ASAM's, SAM-ON's), :mod:`~samkit.optim.schedule` (late and interval
SAM: which calls take the SAM step), :mod:`~samkit.optim.steps` (the state between the two halves of a step),
:mod:`~samkit.optim.ops` (list operations, non-finite checks), :mod:`~samkit.optim.fused` (the flat-buffer step of
``fused=True``),
:mod:`~samkit.optim.accumulation`, :mod:`~samkit.optim.checkpoint`, :mod:`~samkit.optim.integrations` (BatchNorm,
DDP) and :mod:`~samkit.optim.registry` (the optimizers ``samkit train`` offers).
"""

from samkit.optim import registry
from samkit.optim.groups import ProportionalRho, SAMGroup, asam_param_groups, sam_on_param_groups
from samkit.optim.gsam import GSAM
from samkit.optim.sam import SAM, NonFiniteGradientError
from samkit.optim.usam import USAM

__all__ = [
    "SAM",
    "USAM",
    "GSAM",
    "SAMGroup",
    "NonFiniteGradientError",
    "ProportionalRho",
    "asam_param_groups",
    "sam_on_param_groups",
    "registry",
]
