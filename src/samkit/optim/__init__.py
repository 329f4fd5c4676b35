"""PyTorch optimizers of the SAM family (SAM, USAM, unified SAM, ASAM) and training helpers."""

from samkit.optim.sam import GSAM, SAM, USAM, NonFiniteGradientError, ProportionalRho, asam_param_groups

__all__ = ["SAM", "USAM", "GSAM", "NonFiniteGradientError", "ProportionalRho", "asam_param_groups"]
