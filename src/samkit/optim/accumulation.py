"""Gradient accumulation for :class:`samkit.SAM`: :meth:`SAM.step_accumulated <samkit.SAM.step_accumulated>`.

A batch given as micro-batches, in one of two modes: ``"full"`` (ε from the gradient accumulated over every
micro-batch; SAM on the full batch) or ``"m-sharpness"`` (one ε per micro-batch, Foret et al.'s m-sharpness). The
optimizer's two steps do the work; this module runs the passes and weighs the micro-batches. A call that late or
interval SAM (``start``, ``interval``: :mod:`samkit.optim.schedule`) gives to the base optimizer takes its step with
the gradient accumulated over the micro-batches at ``w`` (one pass each).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from samkit._checks import batch_size
from samkit.optim.schedule import sam_due

if TYPE_CHECKING:
    from samkit.optim.sam import SAM

__all__ = ["MODES", "step_accumulated"]

#: the accepted values of ``mode``
MODES = ("full", "m-sharpness")

#: ``backward(micro_batch, weight)``: backpropagate ``weight · loss`` and return the (unweighted) loss, detached
Backward = Callable[[Any, float], Tensor]


def step_accumulated(
    opt: SAM,
    loss_fn: Callable[[Any], Tensor],
    micro_batches: Sequence[Any],
    mode: str = "full",
    weights: Sequence[float] | None = None,
) -> Tensor:
    """One SAM step of ``opt`` over ``micro_batches`` (see :meth:`samkit.SAM.step_accumulated`)."""
    if mode not in MODES:
        raise ValueError(f"mode must be 'full' or 'm-sharpness', got {mode!r}")
    batches = list(micro_batches)
    if not batches:
        raise ValueError("micro_batches is empty")
    if weights is None:
        weights = [float(_micro_batch_size(b)) for b in batches]
    if len(weights) != len(batches) or any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"weights must be {len(batches)} numbers >= 0 with a positive sum, got {weights!r}")
    total = float(sum(weights))
    ws = [float(w) / total for w in weights]
    opt.zero_grad()
    opt._calls += 1
    accumulate = _full if mode == "full" else _m_sharpness
    if not sam_due(opt._calls, opt.start, opt.interval):
        accumulate = _base
    return accumulate(opt, functools.partial(_backward, loss_fn), batches, ws)


def _full(opt: SAM, backward: Backward, batches: list[Any], ws: list[float]) -> Tensor:
    """``mode="full"``: ε from the gradient accumulated over all micro-batches, the descent gradient accumulated
    at ``w + ε``."""
    with opt.first_pass():
        loss = sum(w * backward(b, w) for b, w in zip(batches, ws))
    opt.first_step(zero_grad=True)
    if not opt.skipping:
        opt.second_pass(lambda: [backward(b, w) for b, w in zip(batches, ws)])
    opt.second_step()
    return loss  # type: ignore[return-value]


def _base(opt: SAM, backward: Backward, batches: list[Any], ws: list[float]) -> Tensor:
    """Late or interval SAM's base step: the gradient accumulated over all micro-batches at ``w``, one pass each."""
    loss = sum(w * backward(b, w) for b, w in zip(batches, ws))
    opt._step_unperturbed()
    return loss  # type: ignore[return-value]


def _m_sharpness(opt: SAM, backward: Backward, batches: list[Any], ws: list[float]) -> Tensor:
    """``mode="m-sharpness"``: one ε per micro-batch from its own gradient; the descent gradients taken at each
    micro-batch's ``w + ε`` are averaged with the weights."""
    params = [p for g in opt.param_groups for p in g["params"]]
    accum: list[Tensor | None] = [None] * len(params)
    loss = torch.zeros(())
    for b, w in zip(batches, ws):
        opt.zero_grad()
        with opt.first_pass():
            loss = loss + w * backward(b, 1.0)
        opt.first_step(zero_grad=True)
        if opt.skipping:  # on_nonfinite="skip": the whole step is skipped
            opt.second_step()
            return loss
        opt.second_pass(functools.partial(backward, b, 1.0))
        opt._restore()
        for i, p in enumerate(params):
            if p.grad is not None:
                acc = accum[i]
                if acc is None:
                    acc = accum[i] = torch.zeros_like(p.grad)
                acc.add_(p.grad, alpha=w)
    for p, a in zip(params, accum):
        p.grad = a
    opt._step_unperturbed()
    return loss


def _backward(loss_fn: Callable[[Any], Tensor], batch: Any, weight: float) -> Tensor:
    """``backward(weight · loss_fn(batch))``; returns the (unweighted) loss, detached."""
    with torch.enable_grad():
        loss = loss_fn(batch)
        if loss.dim() != 0:
            raise ValueError(f"loss_fn must return a scalar loss, got shape {tuple(loss.shape)}")
        (loss * weight).backward()
    return loss.detach()


def _micro_batch_size(batch: Any) -> int:
    try:
        return batch_size(batch)
    except ValueError as err:
        raise ValueError(
            f"{err}; the default weights of step_accumulated are the micro-batch sizes: pass weights= "
            "(one number per micro-batch) for batches without a tensor"
        ) from None
