"""Shared helpers for the dynamics-lab tests."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    # tiny batched float64 ops: one thread avoids OpenMP contention on the shared 2-core machine
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
