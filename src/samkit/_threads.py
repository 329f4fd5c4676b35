"""One torch thread policy for samkit: ``$SAMKIT_THREADS`` if set, else one thread (``cores / processes`` under DDP).

One thread is the fastest on small, busy machines (measured on 2 shared cores, one SAM epoch of the small CNN on
Fashion-MNIST: 73 s with 1 thread, 125 s with 2), and a fixed thread count keeps results bit-identical from run
to run. Used by ``samkit train`` (when ``--threads`` is 0) and by the experiment runner for every work unit.

>>> import os
>>> os.environ.pop(ENV_VAR, None) and None
>>> default_threads(), default_threads(world=1)
(1, 1)
>>> with torch_threads(1):
...     torch.get_num_threads()
1
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

__all__ = ["ENV_VAR", "default_threads", "torch_threads"]

#: The environment variable that sets the torch thread count.
ENV_VAR = "SAMKIT_THREADS"


def default_threads(world: int = 1) -> int:
    """``$SAMKIT_THREADS`` when set (an integer >= 1); else 1, or ``cores // world`` for ``world > 1`` processes.

    Raises :class:`ValueError` naming the variable when it is set to anything but a positive integer.
    """
    text = os.environ.get(ENV_VAR, "").strip()
    if text:
        try:
            n = int(text)
        except ValueError:
            n = 0
        if n < 1:
            raise ValueError(f"{ENV_VAR} must be an integer >= 1, got {text!r}")
        return n
    return max(1, (os.cpu_count() or 1) // world) if world > 1 else 1


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block on ``n`` torch threads, then restore the previous count."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)
