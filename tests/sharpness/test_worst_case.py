"""Worst-case and average-case sharpness against closed forms on quadratics and the single-neuron loss."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from samkit.models import MLP
from samkit.sharpness import (
    average_sharpness,
    average_sharpness_fn,
    worst_case_sharpness,
    worst_case_sharpness_fn,
)

F64 = torch.float64


def quadratic(eigs: list[float], seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(len(eigs), len(eigs), generator=g, dtype=F64))
    A = Q @ torch.diag(torch.tensor(eigs, dtype=F64)) @ Q.T
    return (lambda w: 0.5 * w @ A @ w), A


@pytest.mark.parametrize("rho", [1e-3, 0.1, 1.0])
def test_worst_case_on_quadratic_is_rho2_lambda_max_over_2(rho):
    """At the minimum of L = w^T A w / 2 the maximum over the ball is exactly rho^2 lambda_max / 2.

    Tolerance: PGA with normalized steps of size rho is power iteration on A (delta <- rho A delta / ||A delta||
    up to the current point), so after 30 steps the angle error shrinks like (0.5)^30 (lambda_2 / lambda_1 = 0.5)
    and the value error like its square: 1e-6 relative is loose. It is a lower bound: never above the exact value.
    """
    f, A = quadratic([3.0, 1.5, 1.0, 0.2, -0.5])
    exact = rho**2 * 3.0 / 2
    r = worst_case_sharpness_fn(f, torch.zeros(5, dtype=F64), rho, steps=30, restarts=2, seed=1)
    assert r.sharpness <= exact * (1 + 1e-12)
    assert r.sharpness == pytest.approx(exact, rel=1e-6)
    assert float(r.delta.norm()) <= rho * (1 + 1e-12)
    assert r.perturbed_loss - r.loss == r.sharpness and len(r.restart_sharpness) == 2 and r.n_grad == 60
    # average case at the same mean squared radius (sigma^2 n = rho^2) is rho^2 tr(A) / (2 n) < the worst case
    avg = average_sharpness_fn(f, torch.zeros(5, dtype=F64), rho / math.sqrt(5), n_samples=400, seed=0)
    assert abs(avg.sharpness - rho**2 * float(torch.trace(A)) / 10) <= 3 * avg.stderr
    assert r.sharpness > avg.sharpness + 3 * avg.stderr


@pytest.mark.parametrize("y", [0.5, 2.0])
def test_single_neuron_small_rho(y):
    """log cosh(xy) at the minimum (0, y): worst case ~ rho^2 y^2 / 2 for small rho.

    Tolerance: log cosh t = t^2/2 - t^4/12 + ..., and tilting delta toward y changes (y + delta_y)^2 by
    O(rho^2) relatively, so the relative deviation is O(rho^2 (y^2 + 1/y^2)) ~ 4e-4 at rho = 1e-2: 2e-3 is loose,
    while a missing 1/2 or a wrong eigenvalue would be off by 100 %.
    """
    f = lambda p: torch.log(torch.cosh(p[0] * p[1]))  # noqa: E731
    rho = 1e-2
    r = worst_case_sharpness_fn(f, torch.tensor([0.0, y], dtype=F64), rho, steps=10)
    assert r.sharpness == pytest.approx(rho**2 * y**2 / 2, rel=2e-3)


def test_steps1_is_sam_perturbation_and_model_api():
    """One step from delta = 0 is SAM's rho g / ||g||; the model API agrees with the function API."""
    torch.manual_seed(0)
    model = MLP(in_features=4, hidden=(5,), num_classes=3).double()
    x, y = torch.randn(12, 4, dtype=F64), torch.randint(0, 3, (12,))
    batches = [(x[:7], y[:7]), (x[7:], y[7:])]
    ce = nn.functional.cross_entropy
    params = list(model.parameters())
    loss = ce(model(x), y)
    g = torch.cat([t.reshape(-1) for t in torch.autograd.grad(loss, params)])
    rho = 0.05
    with torch.no_grad():
        w = torch.nn.utils.parameters_to_vector(params)
        torch.nn.utils.vector_to_parameters(w + rho * g / g.norm(), params)
        sam_loss = float(ce(model(x), y))
        torch.nn.utils.vector_to_parameters(w, params)
    r = worst_case_sharpness(model, ce, batches, rho, steps=1, restarts=1)
    assert r.perturbed_loss == pytest.approx(sam_loss, rel=1e-12)
    torch.testing.assert_close(r.delta, rho * g / g.norm())
    # more steps and restarts can only increase it; the average case at the same radius is far smaller
    r10 = worst_case_sharpness(model, ce, batches, rho, steps=10, restarts=3, seed=0)
    assert r10.sharpness >= r.sharpness > 0
    n = w.numel()
    avg = average_sharpness(model, ce, batches, rho / math.sqrt(n), n_samples=50, seed=0)
    assert r10.sharpness > avg.sharpness + 3 * avg.stderr
    assert average_sharpness(model, ce, batches, rho / math.sqrt(n), n_samples=50, seed=0).sharpness == avg.sharpness
