"""Save and restore a model's mode so that measurements leave the model exactly as it was."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def module_mode(model: nn.Module, train: bool) -> Iterator[None]:
    """Put every submodule in ``train`` mode for the duration, then restore each submodule's own flag."""
    flags = [(m, m.training) for m in model.modules()]
    model.train(train)
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag
