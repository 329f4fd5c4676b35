"""PyTorch optimizers of the SAM family (SAM, USAM, unified SAM, ASAM, GSAM) and training helpers."""

from samkit.optim.groups import ProportionalRho, asam_param_groups
from samkit.optim.gsam import GSAM
from samkit.optim.sam import SAM, USAM, NonFiniteGradientError

__all__ = ["SAM", "USAM", "GSAM", "NonFiniteGradientError", "ProportionalRho", "asam_param_groups"]
