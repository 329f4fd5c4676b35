"""Shared helpers of the optimizer tests."""

import pytest
from torch import nn


def _mse_closure(model, opt, x, y):
    """The usual closure: zero the gradients, forward, mean squared error, backward; returns the loss."""

    def closure():
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss

    return closure


@pytest.fixture
def mse_closure():
    """``mse_closure(model, opt, x, y)`` makes the usual closure for ``opt.step``."""
    return _mse_closure
