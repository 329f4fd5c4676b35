"""samkit: the reference toolkit for Sharpness-Aware Minimization (SAM) and its unnormalized variant (USAM).

Implements the system of *The Crucial Role of Normalization in Sharpness-Aware Minimization*
(Dai, Ahn, Sra, NeurIPS 2023).
"""

from samkit.core import global_norm, perturbation, perturbation_scale
from samkit.optim import (
    GSAM,
    SAM,
    USAM,
    NonFiniteGradientError,
    ProportionalRho,
    asam_param_groups,
    sam_on_param_groups,
)

__version__ = "0.1.0"

__all__ = [
    "SAM",
    "USAM",
    "GSAM",
    "NonFiniteGradientError",
    "ProportionalRho",
    "asam_param_groups",
    "sam_on_param_groups",
    "global_norm",
    "perturbation",
    "perturbation_scale",
    "__version__",
]
