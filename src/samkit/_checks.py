"""Small shared helpers: argument checks, the batch broadcast view and the batch size of a nested batch.

One of each, used everywhere in samkit (the optimizer, the dynamics lab, the sharpness toolkit, the training
package, the experiments), so the error messages read the same wherever a bad value comes in.

>>> number(0.5, "rho")
0.5
>>> number(-1, "rho")
Traceback (most recent call last):
...
ValueError: rho must be a finite number >= 0, got -1
>>> integer(0, "steps", minimum=1)
Traceback (most recent call last):
...
ValueError: steps must be an integer >= 1, got 0
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from torch import Tensor

__all__ = ["number", "integer", "batch_view", "batch_size"]


def number(
    value: Any,
    name: str,
    *,
    minimum: float | None = 0.0,
    maximum: float | None = None,
    strict: bool = False,
    allow_tensor: bool = False,
    hint: str = "",
) -> float:
    """Return ``value`` as a float after checking it is a finite real number in range.

    ``minimum``/``maximum`` bound it (``None``: unbounded); ``strict=True`` excludes the minimum itself
    (``> minimum`` instead of ``>= minimum``). Booleans are refused. With ``allow_tensor`` a one-element
    tensor is accepted too. The error names the value and what is allowed (followed by ``hint`` in parentheses).

    >>> number(1e-3, "tol", strict=True), number(0.25, "lam", maximum=1.0)
    (0.001, 0.25)
    """
    if allow_tensor and isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a scalar, got a tensor of shape {tuple(value.shape)}")
        value = float(value)
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    if ok and minimum is not None:
        ok = value > minimum if strict else value >= minimum
    if ok and maximum is not None:
        ok = value <= maximum
    if not ok:
        raise ValueError(f"{name} must be {_describe(minimum, maximum, strict)}{_hint(hint)}, got {value!r}")
    return float(value)


def _hint(hint: str) -> str:
    return f" ({hint})" if hint else ""


def _describe(minimum: float | None, maximum: float | None, strict: bool) -> str:
    if minimum is not None and maximum is not None:
        return f"a number in {'(' if strict else '['}{minimum:g}, {maximum:g}]"
    if minimum is not None:
        if strict and minimum == 0:
            return "a positive finite number"
        return f"a finite number {'>' if strict else '>='} {minimum:g}"
    if maximum is not None:
        return f"a finite number <= {maximum:g}"
    return "a finite number"


def integer(value: Any, name: str, *, minimum: int | None = None, maximum: int | None = None, hint: str = "") -> int:
    """Return ``value`` after checking it is an ``int`` (not a bool) in ``[minimum, maximum]``.

    The error names the value and what is allowed (followed by ``hint`` in parentheses).

    >>> integer(3, "k", minimum=1, maximum=5)
    3
    >>> integer(9, "k", minimum=1, maximum=5, hint="5 = the number of parameters")
    Traceback (most recent call last):
    ...
    ValueError: k must be an integer with 1 <= k <= 5 (5 = the number of parameters), got 9
    """
    ok = not isinstance(value, bool) and isinstance(value, int)
    if ok and minimum is not None:
        ok = value >= minimum
    if ok and maximum is not None:
        ok = value <= maximum
    if not ok:
        if minimum is not None and maximum is not None:
            what = f"an integer with {minimum} <= {name} <= {maximum}"
        elif minimum is not None:
            what = f"an integer >= {minimum}"
        elif maximum is not None:
            what = f"an integer <= {maximum}"
        else:
            what = "an integer"
        raise ValueError(f"{name} must be {what}{_hint(hint)}, got {value!r}")
    return value


def batch_view(t: Tensor, ndim: int) -> Tensor:
    """View a per-configuration vector ``t`` of shape ``[B]`` as ``[B, 1, ..., 1]`` (``ndim`` dimensions in all),
    so that it broadcasts against a batch of iterates of shape ``[B, *shape]``.

    >>> import torch
    >>> batch_view(torch.ones(3), 3).shape
    torch.Size([3, 1, 1])
    """
    return t.reshape(-1, *([1] * (ndim - 1)))


def batch_size(batch: Any) -> int:
    """The number of samples in a batch: the first dimension of its first tensor.

    A batch may be a tensor, or nested tuples / lists / dicts whose first leaf is a tensor (``(inputs, targets)``,
    ``{"x": ..., "y": ...}``). A 0-dim tensor counts as one sample. Anything without a tensor is refused.

    >>> import torch
    >>> batch_size((torch.zeros(8, 3), torch.zeros(8))), batch_size({"x": torch.zeros(5, 2)})
    (8, 5)
    """
    first = batch
    while True:
        if isinstance(first, Tensor):
            return int(first.shape[0]) if first.dim() > 0 else 1
        if isinstance(first, (list, tuple)) and first:
            first = first[0]
        elif isinstance(first, Mapping) and first:
            first = next(iter(first.values()))
        else:
            raise ValueError(
                f"cannot tell the batch size of {type(batch).__name__}: a batch must be a tensor or a tuple, "
                "list or dict whose first element is a tensor"
            )
