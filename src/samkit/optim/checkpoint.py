"""Checkpoints of :class:`samkit.SAM`: what ``state_dict()`` adds to the base optimizer's, and the checks on load.

A saved state is the base optimizer's ``state_dict()`` plus a ``"samkit"`` entry: the state version, the counters
(steps taken, steps skipped, and the calls of ``step()`` that late and interval SAM count, so a resumed run takes its
SAM steps where the uninterrupted one would) and the perturbation rule (``normalization``, ``lam``, ``eps``). On
load, a state saved with another rule is refused before anything changes, and a state the base optimizer cannot take
leaves the optimizer as it was.

>>> import torch, samkit
>>> p = [torch.nn.Parameter(torch.ones(2))]
>>> sam = samkit.SAM(p, torch.optim.SGD, rho=0.1, lr=0.1)
>>> usam = samkit.USAM(p, torch.optim.SGD, rho=0.1, lr=0.1)
>>> usam.load_state_dict(sam.state_dict())  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
ValueError: this state was saved by an optimizer with normalization='l2' (λ=1.0), not normalization='none' ...
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from torch.optim import Optimizer

if TYPE_CHECKING:
    from samkit.optim.sam import SAM

__all__ = ["STATE_VERSION", "save", "load"]

#: the version of the ``"samkit"`` entry (a newer one is refused)
STATE_VERSION = 1


def save(opt: SAM) -> dict[str, Any]:
    """The base optimizer's ``state_dict()`` with samkit's entry (see :meth:`samkit.SAM.state_dict`)."""
    if opt.is_perturbed:
        raise RuntimeError(
            "state_dict() called between first_step() and second_step(): the weights are perturbed; "
            "call second_step() first"
        )
    sd = opt.base_optimizer.state_dict()
    sd["samkit"] = {
        "version": STATE_VERSION,
        "steps": opt.steps,
        "skipped_steps": opt.skipped_steps,
        "calls": opt._calls,
        "normalization": opt.normalization,
        "lam": opt.lam,
        "eps": opt.eps,
    }
    return sd


def load(opt: SAM, state_dict: Any) -> None:
    """Load ``state_dict`` into ``opt`` after the checks of :meth:`samkit.SAM.load_state_dict`."""
    if opt.is_perturbed:
        raise RuntimeError("load_state_dict() called between first_step() and second_step()")
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict must be a dict from state_dict(), got {type(state_dict).__name__}")
    state_dict = dict(state_dict)
    extra = state_dict.pop("samkit", None)
    counters = _check_saved_rule(opt, extra) if extra is not None else None
    base = opt.base_optimizer
    before = (base.state, base.param_groups)  # torch builds new objects on load: these stay intact
    try:
        base.load_state_dict(state_dict)
        _check_loaded_groups(base)
    except (KeyError, ValueError, TypeError, IndexError) as err:
        base.state, base.param_groups = before
        opt.param_groups = base.param_groups
        what = f"{type(err).__name__}: {err}" if isinstance(err, KeyError) else str(err)
        raise ValueError(
            f"this state does not fit the base optimizer {type(base).__name__} ({what}): was it saved by another "
            "optimizer, or for other parameters? This optimizer is unchanged"
        ) from None
    opt.param_groups = base.param_groups
    for group in opt.param_groups:
        for key in opt.GROUP_KEYS:
            group.setdefault(key, opt.defaults[key])
    if counters is not None:
        opt.steps, opt.skipped_steps, opt._calls = counters


def _check_saved_rule(opt: SAM, extra: Any) -> tuple[int, int, int]:
    """Check samkit's entry of a saved state against the optimizer's rule; return the saved counters: steps, skipped
    steps and calls (a state saved before the calls were counted: every step came from one call)."""
    if not isinstance(extra, Mapping) or not isinstance(extra.get("normalization", "l2"), str):
        raise ValueError(f"the state's 'samkit' entry is not one written by SAM.state_dict(): {extra!r}")
    version = extra.get("version", STATE_VERSION)
    if not isinstance(version, int) or version > STATE_VERSION:
        raise ValueError(f"this state was written by a newer samkit (state version {version!r}); upgrade samkit")
    norm = extra.get("normalization", opt.normalization)
    lam = extra.get("lam", opt.lam)
    if norm != opt.normalization or lam != opt.lam:
        raise ValueError(
            f"this state was saved by an optimizer with normalization={norm!r} (λ={lam!r}), not "
            f"normalization={opt.normalization!r} (λ={opt.lam!r}) as this one: its perturbation rule differs; "
            "build the optimizer with the saved rule, or load the state without its 'samkit' entry to reuse "
            "only the base optimizer's state"
        )
    eps = extra.get("eps", opt.eps)
    if eps != opt.eps:
        # the caller of load_state_dict: SAM.load_state_dict -> load -> here -> warn
        warnings.warn(f"loading a state saved with eps={eps!r} into an optimizer with eps={opt.eps!r}", stacklevel=4)
    try:
        steps, skipped = int(extra.get("steps", 0)), int(extra.get("skipped_steps", 0))
        return steps, skipped, int(extra.get("calls", steps + skipped))
    except (TypeError, ValueError):
        raise ValueError(f"the state's step counters are not integers: {extra!r}") from None


def _check_loaded_groups(base: Optimizer) -> None:
    """After a load: every group holds every option of ``base`` (a group from another optimizer class lacks some)."""
    for i, group in enumerate(base.param_groups):
        missing = sorted(k for k in base.defaults if k not in group)
        if missing:
            raise ValueError(f"parameter group {i} lacks {type(base).__name__}'s options {', '.join(missing)}")
