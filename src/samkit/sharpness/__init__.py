"""Sharpness toolkit: Hessian-vector products, top-k eigenvalues, the eigenvalue density (SLQ), the Hessian trace
(Hutchinson, Hutch++) and diagonal, worst- and average-case sharpness.

Every measurement takes ``(model, loss_fn, batches)`` and is exact over all batches (the dataset loss is the
batch-size-weighted mean of ``loss_fn(model(inputs), targets)``), or a function of a flat tensor (``*_fn``). Models
are evaluated in eval mode by default (BatchNorm running statistics, no dropout; ``train_mode=True`` to use batch
statistics) and left exactly as they were: modes, parameters, ``.grad`` and buffers.

>>> import torch
>>> from samkit.sharpness import top_eigenvalues
>>> torch.manual_seed(0)  # doctest: +ELLIPSIS
<torch._C.Generator object at ...>
>>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
>>> data = [(torch.randn(16, 4), torch.randint(0, 3, (16,)))]
>>> r = top_eigenvalues(model, torch.nn.functional.cross_entropy, data, k=2)
>>> r.eigenvalues.shape, r.eigenvectors.shape, r.converged
(torch.Size([2]), torch.Size([2, 67]), True)
"""

from samkit.sharpness.density import SpectralDensity, spectral_density, spectral_density_fn
from samkit.sharpness.eigen import (
    EIGEN_METHODS,
    EigenResult,
    function_objective,
    lanczos,
    power_iteration,
    top_eigenvalues,
    top_eigenvalues_fn,
)
from samkit.sharpness.hvp import FunctionObjective, ModelObjective, Objective, hvp, hvp_fn
from samkit.sharpness.trace import (
    TRACE_METHODS,
    DiagonalResult,
    TraceResult,
    hessian_diagonal,
    hessian_diagonal_fn,
    hessian_trace,
    hessian_trace_fn,
)
from samkit.sharpness.worst_case import (
    AverageSharpnessResult,
    WorstCaseResult,
    average_sharpness,
    average_sharpness_fn,
    worst_case_sharpness,
    worst_case_sharpness_fn,
)

__all__ = [
    "EIGEN_METHODS",
    "TRACE_METHODS",
    "AverageSharpnessResult",
    "DiagonalResult",
    "EigenResult",
    "FunctionObjective",
    "ModelObjective",
    "Objective",
    "SpectralDensity",
    "TraceResult",
    "WorstCaseResult",
    "average_sharpness",
    "average_sharpness_fn",
    "function_objective",
    "hessian_diagonal",
    "hessian_diagonal_fn",
    "hessian_trace",
    "hessian_trace_fn",
    "hvp",
    "hvp_fn",
    "lanczos",
    "power_iteration",
    "spectral_density",
    "spectral_density_fn",
    "top_eigenvalues",
    "top_eigenvalues_fn",
    "worst_case_sharpness",
    "worst_case_sharpness_fn",
]
