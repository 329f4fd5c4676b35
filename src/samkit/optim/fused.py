"""The fused SAM step (``SAM(..., fused=True)``): flat buffers per (device, dtype) instead of lists of tensors.

On its first step, a fused optimizer moves the perturbed parameters that have gradients (a ``perturb=False`` group,
as in SAM-ON, stays as it is) into one flat buffer per device and dtype (each parameter becomes a view of it,
``p.data = flat[a:b].view_as(p)``, as FSDP's flat parameters do; the values are copied, the ``Parameter`` objects
stay the same). Then every step is, per device and dtype:

* first step: one copy gathering the gradients into a flat gradient buffer, one norm of it (which is also the
  finite check), one flat copy for the backup and one flat ``add_`` per parameter group for the perturbation;
* second step: one flat copy for the restore (the backup is a copy: the weights come back bit for bit), and the
  finite check of the new gradients (the foreach path's multi-tensor check).

After the gather each laid-out parameter's ``.grad`` is re-pointed to its view of the flat gradient buffer (same
shape, dtype, device and values). With ``zero_grad(set_to_none=False)`` torch zeroes these views in place and backward
accumulates into them, so the next step finds its gradients already flat (every ``.grad`` is its view, checked by
identity): no gather, and the second pass's finite check is one kernel on the flat buffer instead of a loop over the
list. **Use ``zero_grad(set_to_none=False)`` with ``fused=True`` for the fastest path.** With torch's default
``set_to_none=True`` (and SAM's own ``first_step(zero_grad=True)``, which uses it), backward allocates new gradients
and each step gathers them as above; where only some gradients are the views (one was replaced, a parameter has no
gradient this step), the step gathers too. The numbers are the same either way.

The foreach path takes a kernel per tensor for the norm, the backup, the perturbation and the restore; on a CPU
each costs about 1 µs per tensor beyond the memory traffic. The rule is :mod:`samkit.core`'s (the same
:func:`~samkit.core.coefficients`, ``eps`` and zero-gradient guard); only the norm rounds differently: one reduction
over the flat gradient instead of per-tensor norms combined scale-safely, so results agree with ``fused=False`` to
float rounding (about 1e-7 relative in float32, 1e-16 in float64), not bit for bit. Wherever the flat norm is not
in the plain range (inf/NaN, overflow, possible underflow), or a coefficient overflows, or a group is ASAM
(``adaptive``), the step takes the foreach rule (:func:`samkit.core.perturb`): the same decisions (skip, raise,
rescale) as ``fused=False``; the backup and the restore stay flat.

Costs: one flat gradient buffer beyond the backup that the foreach path keeps too (the ``.grad`` tensors it replaces
are freed when nothing else holds them; with ``set_to_none=True`` backward allocates new ones every pass).
A parameter that is not contiguous (e.g. channels_last) cannot be fused: such a step runs on the foreach path (with
a warning, once); sparse gradients are a ValueError. Moving the model (``model.to``) or rebinding ``p.data`` after the
first step is seen (the data pointers are checked every step) and the flat layout is rebuilt.

>>> import torch, samkit
>>> model = torch.nn.Linear(3, 2)
>>> opt = samkit.SAM(model.parameters(), torch.optim.SGD, rho=0.05, fused=True, lr=0.1)
>>> model(torch.randn(4, 3)).sum().backward(); opt.first_step(zero_grad=True)
>>> model(torch.randn(4, 3)).sum().backward(); opt.second_step(zero_grad=True)
>>> model.weight.data_ptr() == opt._fused.layout.flat_params[0].data_ptr()    # the weight is a view of the flat
True
>>> model(torch.randn(4, 3)).sum().backward(); opt.first_step()
>>> model.weight.grad.data_ptr() == opt._fused.layout.flat_grads[0].data_ptr()  # and its gradient too
True
"""

from __future__ import annotations

import math
import operator
import warnings
from collections.abc import Sequence

import torch
from torch import Tensor

from samkit._compat import group_by_device_and_dtype
from samkit.core import Perturbation, _exact_floor, _scaled_norm, coefficients
from samkit.optim.groups import SAMGroup
from samkit.optim.ops import ForeachOps, Groups

__all__ = ["FusedStep", "fused_step", "FlatLayout", "FusedOps"]


def fused_step(fused: bool, foreach: bool) -> FusedStep | None:
    """The fused step for ``SAM(fused=..., foreach=...)``, or None for the list path; checks the two options.

    >>> fused_step(False, True) is None, type(fused_step(True, True)).__name__
    (True, 'FusedStep')
    >>> fused_step(True, False)
    Traceback (most recent call last):
    ...
    ValueError: fused=True needs foreach=True (the fused step replaces the multi-tensor kernels; foreach=False is the single-tensor reference loop): pass one of them
    """
    if not isinstance(fused, bool):
        raise TypeError(f"fused must be True or False, got {fused!r}")
    if fused and not foreach:
        raise ValueError(
            "fused=True needs foreach=True (the fused step replaces the multi-tensor kernels; foreach=False is the "
            "single-tensor reference loop): pass one of them"
        )
    return FusedStep() if fused else None


class FlatLayout:
    """The parameters (with gradients, in group order) as views of one flat buffer per (device, dtype)."""

    def __init__(self, params: list[Tensor], group_of: list[int]) -> None:
        self.params = params
        self.keys = list(group_by_device_and_dtype(params).items())
        self.flat_params: list[Tensor] = []
        self.flat_grads: list[Tensor] = []
        self.flat_backups: list[Tensor] = []
        self.grad_views: list[list[Tensor]] = []
        self.views: list[Tensor] = [params[0]] * len(params)  # each parameter's view of the flat gradient buffer
        self.ranges: list[list[tuple[int, int, int]]] = []  # per key: (group, start, end)
        for (device, dtype), idx in self.keys:
            n = sum(params[i].numel() for i in idx)
            flat, grads = torch.empty(n, device=device, dtype=dtype), torch.empty(n, device=device, dtype=dtype)
            views: list[Tensor] = []
            ranges: list[tuple[int, int, int]] = []
            start = 0
            for i in idx:
                p, end = params[i], start + params[i].numel()
                flat[start:end].view_as(p).copy_(p)
                p.data = flat[start:end].view_as(p)
                views.append(grads[start:end].view_as(p))
                self.views[i] = views[-1]
                if ranges and ranges[-1][0] == group_of[i]:
                    ranges[-1] = (group_of[i], ranges[-1][1], end)
                else:
                    ranges.append((group_of[i], start, end))
                start = end
            self.flat_params.append(flat)
            self.flat_grads.append(grads)
            self.flat_backups.append(torch.empty_like(flat))
            self.grad_views.append(views)
            self.ranges.append(ranges)
        self.pointers = [p.data_ptr() for p in params]
        self.flat_groups = group_by_device_and_dtype(self.flat_grads)

    def fits(self, params: Sequence[Tensor]) -> bool:
        """``params`` are this layout's parameters, each still a view of the flat buffer."""
        return (
            len(params) == len(self.params)
            and all(map(_same, params, self.params))
            and [p.data_ptr() for p in params] == self.pointers
        )

    def linked(self, grads: Sequence[Tensor]) -> bool:
        """``grads`` are exactly this layout's gradient views (the parameters' ``.grad`` after a gather, kept by
        ``zero_grad(set_to_none=False)`` and accumulated into in place by backward): the flat buffers hold them."""
        return len(grads) == len(self.views) and all(map(operator.is_, grads, self.views))

    def gather(self, grads: Sequence[Tensor]) -> None:
        """Make the flat gradient buffers hold the gradients (in the layout's order) and the parameters' ``.grad``
        their views: nothing to do when they already are (:meth:`linked`); else one copy per key, and each ``.grad``
        is re-pointed to its view (the same values, shape, dtype and device)."""
        if self.linked(grads):
            return
        if len(self.keys) == 1:
            torch._foreach_copy_(self.grad_views[0], list(grads))
        else:
            for views, (_, idx) in zip(self.grad_views, self.keys):
                torch._foreach_copy_(views, [grads[i] for i in idx])
        for p, view in zip(self.params, self.views):
            p.grad = view


def _same(a: Tensor, b: Tensor) -> bool:
    return a is b


def _fusable(params: Sequence[Tensor], grads: Sequence[Tensor]) -> str | None:
    """Why these tensors cannot be fused (None: they can)."""
    if any(g.is_sparse for g in grads):
        raise ValueError("SAM(fused=True) does not support sparse gradients (nor does the foreach rule's norm)")
    if any(not p.is_contiguous() for p in params):
        return "a parameter is not contiguous (e.g. channels_last)"
    if any(not p.is_floating_point() for p in params):
        return "a parameter is not floating point"
    return None


class FusedOps(ForeachOps):
    """The foreach list operations (``opt.ops`` of a fused optimizer), except that the non-finite check and the
    unscale of gradients that are the flat layout's views (:meth:`FlatLayout.linked`) take the flat gradient buffers:
    one kernel per (device, dtype) instead of a loop over the list. Any other list takes the foreach kernels."""

    def __init__(self, step: FusedStep) -> None:
        self._step = step

    def unscale_(self, tensors: list[Tensor], inv_scale: float, groups: Groups | None = None) -> bool:
        layout = self._step.layout
        if layout is not None and layout.linked(tensors):
            return super().unscale_(layout.flat_grads, inv_scale, layout.flat_groups)
        return super().unscale_(tensors, inv_scale, groups)


class FusedStep:
    """The fused first step of :class:`samkit.SAM` (``fused=True``); see the module docstring."""

    def __init__(self) -> None:
        self.layout: FlatLayout | None = None
        self.ops = FusedOps(self)  # the optimizer's list operations (its second pass's check on the flat buffers)
        self._flat_rule: Perturbation | None = None  # the last rule computed on the flat buffers
        self._warned = False

    def prepare(self, groups: Sequence[SAMGroup]) -> bool:
        """Lay the parameters of ``groups`` out flat (once; again when they changed) and gather their gradients.
        False: this step cannot be fused (it runs on the foreach path)."""
        params = [p for g in groups for p in g.params]
        grads = [x for g in groups for x in g.grads]
        layout = self.layout
        if layout is None or not layout.fits(params):
            why = _fusable(params, grads)
            if why is not None:
                if not self._warned:
                    warnings.warn(f"SAM(fused=True): {why}; this step runs on the foreach path", stacklevel=4)
                    self._warned = True
                self.layout = None
                return False
            group_of = [k for k, g in enumerate(groups) for _ in g.params]
            layout = self.layout = FlatLayout(params, group_of)
        layout.gather(grads)
        return True

    def perturb(self, groups: Sequence[SAMGroup], lam: float, eps: float) -> Perturbation | None:
        """The rule on the flat gradients (after :meth:`prepare`); None where the foreach rule must decide (a norm out
        of the plain range, an overflowing coefficient, an ASAM group)."""
        layout = self.layout
        self._flat_rule = None
        if layout is None or any(g.scales is not None for g in groups):
            return None
        dtype = torch.float64 if any(k[1] == torch.float64 for k, _ in layout.keys) else torch.float32
        norms = [torch.linalg.vector_norm(f, dtype=dtype) for f in layout.flat_grads]
        device = norms[0].device
        total = norms[0] if len(norms) == 1 else _scaled_norm(torch.stack([n.to(device) for n in norms]))
        value = float(total)
        if not (math.isfinite(value) and value > _exact_floor(dtype)):
            return None
        rhos = torch.tensor([g.rho for g in groups], dtype=dtype)
        cs = coefficients(torch.tensor(value, dtype=dtype), rhos, lam, eps).tolist()
        if not all(map(math.isfinite, cs)):
            return None
        if len(groups) == 1:
            eps_norm = total * abs(cs[0])
        else:  # ‖ε‖ = ‖(|c_k| ‖g_k‖)_k‖ over the groups' flat ranges
            parts = [
                abs(cs[k]) * torch.linalg.vector_norm(flat[a:b], dtype=dtype).to(device)
                for flat, ranges in zip(layout.flat_grads, layout.ranges)
                for k, a, b in ranges
            ]
            eps_norm = _scaled_norm(torch.stack(parts))
        rule = self._flat_rule = Perturbation([list(g.grads) for g in groups], cs, total, eps_norm, True)
        return rule

    def apply(self, params: Sequence[Sequence[Tensor]], rule: Perturbation) -> tuple[list[Tensor], list[Tensor]]:
        """Back up the flat parameters (one copy per key) and add ε (``params[k]``: group ``k``'s parameters);
        return what the restore copies back."""
        layout = self.layout
        assert layout is not None
        torch._foreach_copy_(layout.flat_backups, layout.flat_params)
        if rule is self._flat_rule:
            for flat, grads, ranges in zip(layout.flat_params, layout.flat_grads, layout.ranges):
                for k, a, b in ranges:
                    whole = a == 0 and b == flat.numel()
                    (flat if whole else flat[a:b]).add_(grads if whole else grads[a:b], alpha=rule.coefficients[k])
        else:
            for group, direction, c in zip(params, rule.directions, rule.coefficients):
                torch._foreach_add_(list(group), list(direction), alpha=c)
        return list(layout.flat_params), list(layout.flat_backups)
