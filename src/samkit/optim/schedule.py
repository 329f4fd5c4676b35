"""Which calls of :meth:`SAM.step <samkit.SAM.step>` take the SAM step: late SAM (``start``) and interval SAM.

A :class:`~samkit.SAM` counts the calls of ``step()`` and ``step_accumulated()``. Call ``n`` (1-based) takes the
SAM step when it comes after the first ``start`` calls and falls on the ``interval`` grid counted from there:

    ``n > start`` and ``(n − 1 − start) mod interval = 0``

and the base optimizer's step alone otherwise (one forward and backward pass, the gradient at ``w``). So
``start=0, interval=1`` (the defaults) is SAM at every call; ``start=N`` is *late SAM* (Zhou et al., ICLR 2025:
the base optimizer for the first ``N`` steps, SAM after); ``interval=k`` is a SAM step every ``k``-th call (MosaicML
Composer's method card); together, the first call after ``start`` is a SAM step and then every ``k``-th. The
two-step API (``first_step`` / ``second_step``) is not counted: there the caller decides.

>>> [sam_due(n, start=2, interval=1) for n in range(1, 6)]      # late SAM: SGD, SGD, SAM, SAM, SAM
[False, False, True, True, True]
>>> [sam_due(n, start=2, interval=2) for n in range(1, 8)]      # then every second call
[False, False, True, False, True, False, True]
"""

from __future__ import annotations

import math
from typing import Any

from samkit._checks import integer

__all__ = ["sam_due", "last_call_was_sam", "check_start", "resolve_start"]


def sam_due(call: int, start: int, interval: int) -> bool:
    """Whether call ``call`` (1-based) of ``step()`` / ``step_accumulated()`` takes the SAM step (module docstring).

    >>> sam_due(1, start=0, interval=1), sam_due(2, start=0, interval=3), sam_due(4, start=0, interval=3)
    (True, False, True)
    """
    return call > start and (call - 1 - start) % interval == 0


def last_call_was_sam(opt: Any) -> bool:
    """Whether the last call of ``opt.step()`` / ``opt.step_accumulated()`` (a :class:`~samkit.SAM`) took the SAM
    step, so that ``opt.last_grad_norm`` and ``opt.last_perturbation_norm`` are that step's (after a base step they
    are an earlier SAM step's). True before the first call and for every call with ``start=0, interval=1``.

    >>> import torch, samkit
    >>> opt = samkit.SAM([torch.nn.Parameter(torch.ones(2))], torch.optim.SGD, lr=0.1, start=1)
    >>> _ = opt.step(lambda: opt.param_groups[0]["params"][0].sum().backward()); last_call_was_sam(opt)
    False
    """
    return opt._calls == 0 or sam_due(opt._calls, opt.start, opt.interval)


def check_start(start: Any) -> int:
    """``start`` after checking it is a whole number of calls ``>= 0`` (a fraction is refused: the optimizer does not
    know the length of training; :func:`resolve_start` turns one into steps).

    >>> check_start(3)
    3
    >>> check_start(0.5)
    Traceback (most recent call last):
    ...
    ValueError: start must be an integer >= 0 (the calls of step() that take the base step alone; for a fraction of training, resolve_start(fraction, total_steps)), got 0.5
    """
    return integer(start, "start", minimum=0, hint=_START_HINT)


_START_HINT = (
    "the calls of step() that take the base step alone; for a fraction of training, resolve_start(fraction, "
    "total_steps)"
)


def resolve_start(value: float | int | None, total_steps: int | None) -> int:
    """Late SAM's first SAM step as a number of base steps: ``value`` a whole number of steps (``>= 0``), or a
    fraction in (0, 1) of ``total_steps`` (``⌊value · total_steps⌋``); ``None`` is 0 (SAM from the first step).

    >>> resolve_start(0.25, 1000), resolve_start(300, None), resolve_start(None, 10)
    (250, 300, 0)
    >>> resolve_start(1.5, 100)
    Traceback (most recent call last):
    ...
    ValueError: the start of SAM must be a fraction in (0, 1) of the steps or a whole number of steps >= 0, got 1.5
    """
    if value is None:
        return 0
    bad = isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0
    if not bad and 0 < value < 1:
        if total_steps is None:
            raise ValueError(f"a start of SAM given as a fraction ({value!r}) needs the total number of steps")
        return math.floor(value * integer(total_steps, "total_steps", minimum=0))
    if bad or not float(value).is_integer():
        raise ValueError(
            f"the start of SAM must be a fraction in (0, 1) of the steps or a whole number of steps >= 0, got {value!r}"
        )
    return int(value)
