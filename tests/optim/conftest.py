"""Shared helpers of the optimizer tests."""

import pytest
from closures import mse_closure as _mse_closure


@pytest.fixture
def mse_closure():
    """``mse_closure(model, opt, x, y)`` makes the usual closure for ``opt.step``."""
    return _mse_closure
