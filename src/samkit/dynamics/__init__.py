"""The dynamics lab: exact, batched GD / SAM / USAM on the paper's problems, and each theorem in code.

>>> import torch
>>> from samkit.dynamics import Quadratic, simulate, theory
>>> q = Quadratic([10.0, 1.0])
>>> etas = torch.linspace(0.05, 0.15, 11, dtype=torch.float64)
>>> res = simulate(q, "usam", eta=etas, rho=0.1, x0=torch.ones(2), steps=500, blowup=1e12)
>>> float(theory.usam_threshold(q.beta, 0.1)), round(res.eta[~res.diverged].max().item(), 12)  # marginal at 0.1
(0.1, 0.1)
"""

from samkit.dynamics import theory
from samkit.dynamics.boundary import Boundary, divergence_boundary, factorization_boundary, factorization_start
from samkit.dynamics.problems import (
    MatrixSensing,
    PLManifold,
    Problem,
    Quadratic,
    ScalarFactorization,
    SingleNeuron,
    SmoothStronglyConvex,
    batched_power_iteration,
)
from samkit.dynamics.simulate import SIM_METHODS, SimResult, simulate

__all__ = [
    "Problem",
    "Quadratic",
    "SmoothStronglyConvex",
    "ScalarFactorization",
    "SingleNeuron",
    "PLManifold",
    "MatrixSensing",
    "batched_power_iteration",
    "simulate",
    "SimResult",
    "SIM_METHODS",
    "divergence_boundary",
    "factorization_boundary",
    "factorization_start",
    "Boundary",
    "theory",
]
