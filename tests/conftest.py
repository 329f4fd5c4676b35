"""Suite-wide settings."""

import sys
from pathlib import Path

import pytest
import torch

# tests/helpers holds modules the tests import by name (e.g. ``cifar_files``) and scripts run under torchrun
sys.path.insert(0, str(Path(__file__).parent / "helpers"))


@pytest.fixture(autouse=True)
def _one_thread():
    # The tests run many tiny ops; one thread avoids OpenMP contention on small shared 2-core machines
    # (measured: small float64 matmuls 0.18 ms with one thread vs 15 ms with two under load).
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
