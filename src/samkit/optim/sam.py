"""SAM / USAM / unified SAM / ASAM as a ``torch.optim.Optimizer`` wrapping any base optimizer.

The perturbation itself is :func:`samkit.core.perturb` (the rule, written once); this module collects the tensors,
applies ε in place, restores the weights exactly and drives the base optimizer, with the training integrations
(GradScaler, BatchNorm statistics, DDP, gradient accumulation, interval SAM).
"""

from __future__ import annotations

import contextlib
import functools
import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.optim import Optimizer

from samkit._checks import batch_size, integer, number
from samkit.core import Groups, adaptive_scale, check_rho, grouped, nonfinite, perturb, resolve_lam, unscale_
from samkit.optim._foreach import add_, copy_

__all__ = ["SAM", "USAM", "NonFiniteGradientError"]

_STATE_VERSION = 1
_GROUP_KEYS = ("rho", "adaptive", "adaptive_eta")


_is_none = functools.partial(operator.is_, None)


class NonFiniteGradientError(RuntimeError):
    """Raised when a gradient holds inf or NaN and ``on_nonfinite="raise"`` (the default)."""


class _Group(NamedTuple):
    """One parameter group's share of a step: the parameters that have a gradient, and what the rule needs."""

    params: list[Tensor]
    grads: list[Tensor]
    rho: float
    #: ASAM's ``T = |w| + adaptive_eta`` per parameter, or None (plain SAM in this group)
    scales: list[Tensor] | None


@dataclass
class _Pending:
    """A step between :meth:`SAM.first_step` and :meth:`SAM.second_step` (``SAM._pending``; None when idle)."""

    #: the tensors changed in place by the perturbation (parameters, then BatchNorm buffers) and their saved values
    changed: list[Tensor] = field(default_factory=list)
    saved: list[Tensor] = field(default_factory=list)
    #: the step will be skipped: a non-finite gradient with ``on_nonfinite="skip"``, or a GradScaler overflow
    skip: bool = False
    #: the GradScaler already recorded the overflow of the first pass
    scaler_recorded: bool = False


class SAM(Optimizer):
    r"""Sharpness-Aware Minimization with normalization as a first-class knob.

    Each step perturbs the weights by ε, takes the gradient there, restores the weights and lets the base
    optimizer step with that gradient: ``w ← base_step(w, ∇L(w + ε(∇L(w))))``. The perturbation is
    computed by :mod:`samkit.core`:

    * ``normalization="l2"`` (SAM, Foret et al. 2021): ``ε = ρ g / (‖g‖ + eps)``;
    * ``normalization="none"`` (USAM): ``ε = ρ g`` (no projection, no clipping);
    * ``normalization="unified"`` with ``lam=λ`` (Oikonomou & Loizou 2025): ``ε = ρ((1−λ) g + λ g/‖g‖)``;
    * ``adaptive=True`` (ASAM, Kwon et al. 2021): with ``T = |w| + adaptive_eta`` elementwise,
      ``g`` is replaced by ``T g`` in the norm and ``ε = c · T² g`` (official ASAM formula, η = 0.01).
      ``adaptive`` and ``adaptive_eta`` are per parameter group, so biases and normalization weights
      can be excluded (see :func:`asam_param_groups`).

    ``‖g‖`` is the global norm over every parameter with a gradient, across all groups, computed
    scale-safely in at least float32. ``rho`` may differ per group (``group["rho"]``, mutable, so it
    can be scheduled); the norm stays global. A zero gradient gives no perturbation.

    Args:
        params: iterable of parameters or parameter-group dicts (groups may set ``rho``, ``adaptive``,
            ``adaptive_eta`` and any base-optimizer option). With an already built ``base_optimizer``,
            ``params`` may be ``None`` or must hold exactly that optimizer's parameters.
        base_optimizer: an optimizer class (built as ``base_optimizer(param_groups, **base_kwargs)``)
            or an optimizer instance. Its ``param_groups`` are shared with this object.
        rho: neighbourhood size ρ ≥ 0. ``rho=0`` reproduces the base optimizer bit for bit.
        normalization: ``"l2"`` (SAM), ``"none"`` (USAM) or ``"unified"`` (needs ``lam``).
        lam: λ ∈ [0, 1] for ``"unified"``.
        adaptive: ASAM scaling (default for groups that do not set it).
        adaptive_eta: ASAM's η in ``T = |w| + η``.
        eps: added to ‖g‖ in the normalized part. ``eps=0`` is exact normalization.
        foreach: use the multi-tensor (``torch._foreach_*``) path; ``False`` runs the single-tensor
            reference path, which gives identical results.
        on_nonfinite: what to do when a gradient (either pass) holds inf/NaN: ``"raise"`` a
            :class:`NonFiniteGradientError` (parameters are left unperturbed), or ``"skip"`` the step
            (parameters and base-optimizer state untouched; counted in ``skipped_steps``).
        model: the model being trained (optional). When given, (1) the BatchNorm running statistics
            (``running_mean``, ``running_var``, ``num_batches_tracked`` of every ``_BatchNorm``, SyncBatchNorm
            included) are those of the first pass: the second forward does not move them (right for
            ``momentum=None`` too); (2) with a ``DistributedDataParallel`` model and ``perturbation="local"``,
            :meth:`step` runs the first forward and backward under ``model.no_sync()``.
        perturbation: ``"local"`` (default; each replica perturbs with its own gradient, Foret et al.'s
            m-sharpness with m = the per-replica batch) or ``"global"`` (the first-pass gradient is averaged
            over replicas before the norm: by DDP's own all-reduce, or by an explicit all-reduce when the
            model is not DDP-wrapped and ``torch.distributed`` is initialized).
        interval: take the SAM step every ``interval``-th call of :meth:`step` and the plain base step
            otherwise ("interval SAM", MosaicML Composer's SAM method card). 1 means always SAM.
        **base_kwargs: passed to ``base_optimizer`` when it is a class (``lr``, ``momentum``, ...).

    Example:
        >>> import torch, samkit
        >>> model = torch.nn.Linear(3, 1)
        >>> opt = samkit.SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9)
        >>> x, y = torch.randn(8, 3), torch.randn(8, 1)
        >>> def closure():
        ...     opt.zero_grad()
        ...     loss = torch.nn.functional.mse_loss(model(x), y)
        ...     loss.backward()
        ...     return loss
        >>> loss = opt.step(closure)          # two forward/backward passes, one base step

    The same with the two-step API::

        loss_fn(model(x), y).backward(); opt.first_step(zero_grad=True)
        loss_fn(model(x), y).backward(); opt.second_step(zero_grad=True)

    One host synchronisation per pass reads the gradient norm (to detect non-finite gradients).
    """

    def __init__(
        self,
        params: Iterable[Any] | None,
        base_optimizer: type[Optimizer] | Optimizer,
        rho: float = 0.05,
        *,
        normalization: str = "l2",
        lam: float | None = None,
        adaptive: bool = False,
        adaptive_eta: float = 0.01,
        eps: float = 1e-12,
        foreach: bool = True,
        on_nonfinite: str = "raise",
        model: torch.nn.Module | None = None,
        perturbation: str = "local",
        interval: int = 1,
        **base_kwargs: Any,
    ) -> None:
        rho = check_rho(rho)
        if perturbation not in ("local", "global"):
            raise ValueError(f"perturbation must be 'local' or 'global', got {perturbation!r}")
        self.interval = integer(interval, "interval", minimum=1)
        if model is not None and not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module or None, got {type(model).__name__}")
        self.model = model
        self.perturbation = perturbation
        self._calls = 0
        self.lam = resolve_lam(normalization, lam)
        self.normalization = normalization
        self.eps = number(eps, "eps")
        adaptive_eta = number(adaptive_eta, "adaptive_eta")
        if on_nonfinite not in ("raise", "skip"):
            raise ValueError(f"on_nonfinite must be 'raise' or 'skip', got {on_nonfinite!r}")
        self.on_nonfinite = on_nonfinite
        self.foreach = bool(foreach)
        defaults = dict(rho=rho, adaptive=bool(adaptive), adaptive_eta=adaptive_eta)

        if isinstance(base_optimizer, Optimizer):
            _check_built_base(params, base_optimizer, base_kwargs)
            for group in base_optimizer.param_groups:
                for key, value in defaults.items():
                    group.setdefault(key, value)
            super().__init__(base_optimizer.param_groups, defaults)
            self.base_optimizer = base_optimizer
        elif isinstance(base_optimizer, type) and issubclass(base_optimizer, Optimizer):
            if params is None:
                raise ValueError("params is required when base_optimizer is a class")
            super().__init__(params, defaults)
            self.base_optimizer = base_optimizer(self.param_groups, **base_kwargs)
        else:
            raise TypeError(
                "base_optimizer must be a torch.optim.Optimizer subclass (e.g. torch.optim.SGD) or an "
                f"instance of one, got {base_optimizer!r}"
            )
        self.param_groups = self.base_optimizer.param_groups
        self.defaults.update(self.base_optimizer.defaults)
        for group in self.param_groups:
            _check_group(group)

        #: the step in progress between first_step and second_step (None: idle)
        self._pending: _Pending | None = None
        self._backup: dict[Tensor, Tensor] = {}
        self._backup_lists: dict[int, tuple[list[Tensor], list[Tensor]]] = {}
        self._layouts: dict[int, tuple[list[Tensor], Groups]] = {}
        self.steps = 0
        self.skipped_steps = 0
        #: ‖g‖ of the last first pass (the norm actually used: of ``T g`` for ASAM groups), a 0-dim tensor.
        self.last_grad_norm: Tensor | None = None
        #: ‖ε‖ of the last perturbation, a 0-dim tensor.
        self.last_perturbation_norm: Tensor | None = None

    # ------------------------------------------------------------------ helpers
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group to both this optimizer and the base optimizer (they share groups)."""
        if not hasattr(self, "base_optimizer"):  # called from Optimizer.__init__
            return super().add_param_group(param_group)
        for key in _GROUP_KEYS:
            param_group.setdefault(key, self.defaults[key])
        _check_group(param_group)
        self.base_optimizer.add_param_group(param_group)
        self.param_groups = self.base_optimizer.param_groups

    def _grads(self) -> list[Tensor]:
        """Every gradient now in ``.grad``, group by group."""
        return [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]

    def _with_grad(self) -> list[Tensor]:
        """Every parameter with a gradient, group by group (the list of the one group itself when it can be)."""
        groups = self.param_groups
        if len(groups) == 1 and not any(map(_is_none, (p.grad for p in groups[0]["params"]))):
            return groups[0]["params"]
        return [p for g in groups for p in g["params"] if p.grad is not None]

    def _layout(self, params: list[Tensor]) -> Groups:
        """:func:`samkit.core.grouped` of these parameters, which is that of their gradients too (a gradient has its
        parameter's device and dtype); computed once per parameter list, like the backups."""
        cached = self._layouts.get(id(params[0])) if params else None
        if cached is not None and len(cached[0]) == len(params) and all(map(operator.is_, cached[0], params)):
            return cached[1]
        layout = grouped(params)
        if params:
            self._layouts[id(params[0])] = (list(params), layout)
        return layout

    def _collect(self) -> list[_Group]:
        """The groups that have gradients, with their ρ (checked: it may be scheduled) and ASAM scales."""
        groups = []
        for group in self.param_groups:
            params = group["params"]
            grads = [p.grad for p in params]
            if any(map(_is_none, grads)):  # (the usual case, every parameter has a gradient, builds no new list)
                params = [p for p, g in zip(params, grads) if g is not None]
                grads = [g for g in grads if g is not None]
            if not params:
                continue
            rho = check_rho(group["rho"])
            scales = [adaptive_scale(p, group["adaptive_eta"]) for p in params] if group["adaptive"] else None
            groups.append(_Group(params, grads, rho, scales))
        return groups

    def _nonfinite(self, where: str) -> None:
        """A non-finite gradient in the ``where`` pass: raise (``on_nonfinite="raise"``) or return (skip the step)."""
        if self.on_nonfinite == "raise":
            raise NonFiniteGradientError(
                f"non-finite gradient (inf or NaN) in the {where} pass; parameters were left unperturbed "
                "and no step was taken. Pass on_nonfinite='skip' to skip such steps instead."
            )

    # ------------------------------------------------------------------ the two steps
    @torch.no_grad()
    def first_step(self, zero_grad: bool = False, *, scaler: Any = None) -> None:
        """Perturb the weights to ``w + ε`` using the gradients now in ``.grad`` (the first pass).

        With a ``torch.amp.GradScaler`` as ``scaler``, the first-pass gradients (of ``scaler.scale(loss)``)
        are unscaled here before ε is computed (essential for USAM, whose ε = ρg would otherwise grow with
        the loss scale). An inf/NaN marks the step as skipped: nothing is perturbed and the scaler records
        the overflow, so ``second_step(scaler=scaler)`` skips the base step and ``scaler.update()`` lowers
        the scale.
        """
        if self._pending is not None:
            raise RuntimeError("first_step() called twice: call second_step() before the next first_step()")
        if scaler is not None and scaler.is_enabled():
            if unscale_(self._grads(), 1.0 / scaler.get_scale(), foreach=self.foreach):
                scaler.unscale_(self.base_optimizer)  # records the overflow for scaler.step / scaler.update
                self._pending = _Pending(skip=True, scaler_recorded=True)
                self.last_grad_norm = self.last_perturbation_norm = None
                return
        if self.perturbation == "global":
            self._all_reduce_grads()
        groups = self._collect()
        if not groups:  # nothing to perturb; the BN statistics are still those of this first pass
            self._pending = _Pending()
            self._save_bn(self._pending)
            self.last_grad_norm = self.last_perturbation_norm = None
            return
        rule = perturb(
            [g.grads for g in groups],
            [g.rho for g in groups],
            self.lam,
            self.eps,
            scales=[g.scales for g in groups],
            foreach=self.foreach,
            groups=self._layout(groups[0].params if len(groups) == 1 else [p for g in groups for p in g.params]),
        )
        if not rule.finite:
            self._nonfinite("first")  # raises, or the step is skipped
            self._pending = _Pending(skip=True)
            self.last_grad_norm = rule.grad_norm
            return
        pending = _Pending()
        for group, direction, c in zip(groups, rule.directions, rule.coefficients):
            saved = self._backups_for(group.params)
            copy_(saved, group.params, self.foreach)
            add_(group.params, direction, c, self.foreach)
            pending.changed += group.params
            pending.saved += saved
        self._pending = pending
        self._save_bn(pending)
        self._after_perturb(groups)
        self.last_grad_norm = rule.grad_norm
        self.last_perturbation_norm = rule.norm
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False, *, scaler: Any = None) -> None:
        """Restore the weights and take the base optimizer's step with the gradients now in ``.grad``.

        With ``scaler``, the second-pass gradients are unscaled by ``scaler.unscale_`` and the step goes
        through ``scaler.step(base_optimizer)``, which skips it on inf/NaN; call ``scaler.update()`` after.
        """
        pending = self._pending
        if pending is None:
            raise RuntimeError(
                "second_step() called before first_step(): call first_step() after the first backward pass"
            )
        self._restore()
        skip = pending.skip
        if scaler is not None and scaler.is_enabled():
            if not pending.scaler_recorded:
                scaler.unscale_(self.base_optimizer)
                skip = skip or nonfinite(self._grads(), foreach=self.foreach)
            if not skip:
                self._before_base_step()
            scaler.step(self.base_optimizer)  # skips the base step when the scaler saw inf/NaN
        elif not skip:
            params = self._with_grad()
            if nonfinite([p.grad for p in params], foreach=self.foreach, groups=self._layout(params)):
                self._nonfinite("second")  # raises, or the step is skipped
                skip = True
            else:
                self._before_base_step()
                self.base_optimizer.step()
        if skip:
            self.skipped_steps += 1
        else:
            self.steps += 1
        self._opt_called = True  # tells LR schedulers attached to this object that a step happened
        if zero_grad:
            self.zero_grad()

    def _restore(self) -> None:
        """Put back the weights (and BN statistics) of before the perturbation, in place, and end the step.

        Exactly the tensors perturbed in this step (storage is never rebound), including the parameters that got
        no gradient in the second pass.
        """
        pending, self._pending = self._pending, None
        if pending is not None:
            copy_(pending.changed, pending.saved, self.foreach)

    # hooks for variants (GSAM)
    def _after_perturb(self, groups: Sequence[_Group]) -> None:
        """Called once the weights are perturbed, with the first-pass gradients still in ``.grad``."""

    def _before_base_step(self) -> None:
        """Called just before the base optimizer steps, with the second-pass gradients in ``.grad``."""

    def _save_bn(self, pending: _Pending) -> None:
        """Add the model's BatchNorm running statistics to what :meth:`_restore` puts back."""
        if self.model is None:
            return
        bufs = []
        for m in self.model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
                bufs.extend(b for b in (m.running_mean, m.running_var, m.num_batches_tracked) if b is not None)
        if bufs:
            saved = self._backups_for(bufs)
            copy_(saved, bufs, self.foreach)
            pending.changed += bufs
            pending.saved += saved

    def _all_reduce_grads(self) -> None:
        """``perturbation="global"`` without DDP's own all-reduce: average the first-pass gradient over ranks."""
        import torch.distributed as dist

        ddp = isinstance(self.model, torch.nn.parallel.DistributedDataParallel)
        if ddp or not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return
        world = dist.get_world_size()
        for grad in self._grads():
            dist.all_reduce(grad)
            grad.div_(world)

    def first_pass(self) -> Any:
        """Context manager for the first forward and backward of the two-step API.

        With a DDP model and ``perturbation="local"`` it is ``model.no_sync()`` (the forward must be inside
        too, or DDP still all-reduces); otherwise it does nothing.

        >>> import torch, samkit
        >>> m = torch.nn.Linear(2, 1)
        >>> opt = samkit.SAM(m.parameters(), torch.optim.SGD, lr=0.1, model=m)
        >>> with opt.first_pass():
        ...     m(torch.ones(4, 2)).sum().backward()
        >>> opt.first_step(zero_grad=True)
        """
        if self.perturbation == "local" and isinstance(self.model, torch.nn.parallel.DistributedDataParallel):
            return self.model.no_sync()
        return contextlib.nullcontext()

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None, *, scaler: Any = None) -> Any:  # type: ignore[override]
        """One full SAM step. ``closure`` must zero the grads, run forward and backward, and return the loss.

        Returns the loss of the first closure call (at the unperturbed weights). With a GradScaler, the
        closure backpropagates ``scaler.scale(loss)`` and you call ``scaler.update()`` after this step::

            def closure():
                opt.zero_grad()
                with torch.autocast("cuda", dtype=torch.float16):
                    loss = loss_fn(model(x), y)
                scaler.scale(loss).backward()
                return loss
            opt.step(closure, scaler=scaler)
            scaler.update()
        """
        if closure is None:
            raise RuntimeError(
                "SAM.step() needs a closure that zeroes the gradients, runs the forward and backward pass and "
                "returns the loss; or use first_step() / second_step()"
            )
        closure = torch.enable_grad()(closure)
        self._calls += 1
        if self.interval > 1 and (self._calls - 1) % self.interval != 0:
            return self._plain_step(closure, scaler)
        with self.first_pass():
            loss = closure()
        self.first_step(zero_grad=True, scaler=scaler)
        if not self._skipping:
            self._second_pass(closure)
        self.second_step(scaler=scaler)
        return loss

    @torch.no_grad()
    def step_accumulated(
        self,
        loss_fn: Callable[[Any], Tensor],
        micro_batches: Sequence[Any],
        *,
        mode: str = "full",
        weights: Sequence[float] | None = None,
    ) -> Tensor:
        """One SAM step over a batch given as micro-batches (gradient accumulation), in one of two modes.

        ``loss_fn(micro_batch)`` runs the forward pass and returns the mean loss of that micro-batch (this
        method calls ``backward``). Micro-batches are weighted by ``weights`` (default: their sizes, the
        first dimension of the first tensor in each, so that the weighted sum is the full-batch mean).

        * ``mode="full"``: ε from the gradient accumulated over all micro-batches (a first accumulation
          sweep), the descent gradient accumulated at ``w + ε`` (a second sweep). Equals SAM on the full batch.
        * ``mode="m-sharpness"``: each micro-batch gets its own ε from its own gradient (m = the micro-batch
          size); the descent gradients are averaged with the weights. One micro-batch equals plain SAM.

        Returns the weighted mean loss at ``w``.

        >>> import torch, samkit
        >>> m = torch.nn.Linear(3, 1)
        >>> opt = samkit.SAM(m.parameters(), torch.optim.SGD, rho=0.05, lr=0.1)
        >>> x, y = torch.randn(8, 3), torch.randn(8, 1)
        >>> chunks = [(x[:4], y[:4]), (x[4:], y[4:])]
        >>> loss = opt.step_accumulated(lambda b: torch.nn.functional.mse_loss(m(b[0]), b[1]), chunks)
        """
        if mode not in ("full", "m-sharpness"):
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
        self.zero_grad()
        self._calls += 1
        accumulate = self._accumulate_full if mode == "full" else self._accumulate_m_sharpness
        return accumulate(functools.partial(_backward, loss_fn), batches, ws)

    def _accumulate_full(self, backward: Callable[[Any, float], Tensor], batches: list[Any], ws: list[float]) -> Tensor:
        """``mode="full"``: ε from the gradient accumulated over all micro-batches, the descent gradient accumulated
        at ``w + ε``."""
        with self.first_pass():
            loss = sum(w * backward(b, w) for b, w in zip(batches, ws))
        self.first_step(zero_grad=True)
        if not self._skipping:
            self._second_pass(lambda: [backward(b, w) for b, w in zip(batches, ws)])
        self.second_step()
        return loss

    def _accumulate_m_sharpness(
        self, backward: Callable[[Any, float], Tensor], batches: list[Any], ws: list[float]
    ) -> Tensor:
        """``mode="m-sharpness"``: one ε per micro-batch from its own gradient; the descent gradients taken at each
        micro-batch's ``w + ε`` are averaged with the weights."""
        params = [p for g in self.param_groups for p in g["params"]]
        accum: list[Tensor | None] = [None] * len(params)
        loss = torch.zeros(())
        for b, w in zip(batches, ws):
            self.zero_grad()
            with self.first_pass():
                loss = loss + w * backward(b, 1.0)
            self.first_step(zero_grad=True)
            if self._skipping:  # on_nonfinite="skip": the whole step is skipped
                self.second_step()
                return loss
            self._second_pass(functools.partial(backward, b, 1.0))
            self._restore()
            for i, p in enumerate(params):
                if p.grad is not None:
                    if accum[i] is None:
                        accum[i] = torch.zeros_like(p.grad)
                    accum[i].add_(p.grad, alpha=w)
        for p, a in zip(params, accum):
            p.grad = a
        self._step_unperturbed()
        return loss

    def _second_pass(self, run: Callable[[], Any]) -> None:
        """Run the forward and backward pass at ``w + ε``; on any error (KeyboardInterrupt included) the weights are
        put back before it propagates."""
        try:
            run()
        except BaseException:
            self._restore()
            raise

    def _plain_step(self, closure: Callable[[], Any], scaler: Any) -> Any:
        """The base optimizer's step alone (the off-steps of ``interval`` SAM), with the same checks."""
        loss = closure()
        self._step_unperturbed(scaler)
        return loss

    @torch.no_grad()
    def _step_unperturbed(self, scaler: Any = None) -> None:
        """The base step with the gradients in ``.grad`` and nothing to restore, through :meth:`second_step`'s
        checks (finite gradients, scaler, counters)."""
        self._pending = _Pending()
        self.second_step(scaler=scaler)

    def _backups_for(self, tensors: list[Tensor]) -> list[Tensor]:
        """Persistent backup buffers (allocated once per tensor, reused every step).

        The list for the last seen tensor list is cached, so a steady training loop does no per-tensor
        Python work here beyond an identity check.
        """
        cached = self._backup_lists.get(id(tensors[0]))
        if cached is not None and len(cached[0]) == len(tensors) and all(map(operator.is_, cached[0], tensors)):
            return cached[1]
        out = []
        for t in tensors:
            buf = self._backup.get(t)
            if buf is None or buf.shape != t.shape or buf.dtype != t.dtype or buf.device != t.device:
                buf = self._backup[t] = torch.empty_like(t, memory_format=torch.preserve_format)
            out.append(buf)
        self._backup_lists[id(tensors[0])] = (list(tensors), out)
        return out

    @property
    def _skipping(self) -> bool:
        """The step in progress will be skipped (a non-finite gradient with ``on_nonfinite="skip"``, or a
        GradScaler overflow in the first pass)."""
        return self._pending is not None and self._pending.skip

    @property
    def is_perturbed(self) -> bool:
        """True between :meth:`first_step` and :meth:`second_step`."""
        return self._pending is not None

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        """The base optimizer's ``state_dict()`` (groups include ``rho``) plus samkit's counters.

        Transient buffers (the weight backup) are not saved. Raises between first and second step.
        """
        if self.is_perturbed:
            raise RuntimeError(
                "state_dict() called between first_step() and second_step(): the weights are perturbed; "
                "call second_step() first"
            )
        sd = self.base_optimizer.state_dict()
        sd["samkit"] = {
            "version": _STATE_VERSION,
            "steps": self.steps,
            "skipped_steps": self.skipped_steps,
            "normalization": self.normalization,
            "lam": self.lam,
            "eps": self.eps,
        }
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state saved by :meth:`state_dict` (a plain base-optimizer state dict is accepted too).

        A state saved with another perturbation rule is refused with a :class:`ValueError` before anything
        changes: a different ``normalization`` (a SAM checkpoint loaded into USAM) or a different ``lam``. A
        different ``eps`` only warns. A state the base optimizer cannot take (an SGD state loaded into an
        Adam-based SAM, another number of parameters) is a :class:`ValueError` too, and leaves this optimizer
        exactly as it was, able to step. To carry a base optimizer's state over to another rule on purpose, load
        it without its ``"samkit"`` entry.

        >>> import torch, samkit
        >>> p = [torch.nn.Parameter(torch.ones(2))]
        >>> sam = samkit.SAM(p, torch.optim.SGD, rho=0.1, lr=0.1)
        >>> usam = samkit.USAM(p, torch.optim.SGD, rho=0.1, lr=0.1)
        >>> usam.load_state_dict(sam.state_dict())  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: this state was saved by an optimizer with normalization='l2' (λ=1.0), not normalization='none' ...
        """
        if self.is_perturbed:
            raise RuntimeError("load_state_dict() called between first_step() and second_step()")
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"state_dict must be a dict from state_dict(), got {type(state_dict).__name__}")
        state_dict = dict(state_dict)
        extra = state_dict.pop("samkit", None)
        counters = self._check_saved_rule(extra) if extra is not None else None
        base = self.base_optimizer
        before = (base.state, base.param_groups)  # torch builds new objects on load: these stay intact
        try:
            base.load_state_dict(state_dict)
            _check_loaded_groups(base)
        except (KeyError, ValueError, TypeError, IndexError) as err:
            base.state, base.param_groups = before
            self.param_groups = base.param_groups
            what = f"{type(err).__name__}: {err}" if isinstance(err, KeyError) else str(err)
            raise ValueError(
                f"this state does not fit the base optimizer {type(base).__name__} ({what}): was it saved by another "
                "optimizer, or for other parameters? This optimizer is unchanged"
            ) from None
        self.param_groups = base.param_groups
        for group in self.param_groups:
            for key in _GROUP_KEYS:
                group.setdefault(key, self.defaults[key])
        if counters is not None:
            self.steps, self.skipped_steps = counters

    def _check_saved_rule(self, extra: Any) -> tuple[int, int]:
        """Check samkit's entry of a saved state against this optimizer's rule; return the saved step counters."""
        if not isinstance(extra, Mapping) or not isinstance(extra.get("normalization", "l2"), str):
            raise ValueError(f"the state's 'samkit' entry is not one written by SAM.state_dict(): {extra!r}")
        version = extra.get("version", _STATE_VERSION)
        if not isinstance(version, int) or version > _STATE_VERSION:
            raise ValueError(f"this state was written by a newer samkit (state version {version!r}); upgrade samkit")
        norm = extra.get("normalization", self.normalization)
        lam = extra.get("lam", self.lam)
        if norm != self.normalization or lam != self.lam:
            raise ValueError(
                f"this state was saved by an optimizer with normalization={norm!r} (λ={lam!r}), not "
                f"normalization={self.normalization!r} (λ={self.lam!r}) as this one: its perturbation rule differs; "
                "build the optimizer with the saved rule, or load the state without its 'samkit' entry to reuse "
                "only the base optimizer's state"
            )
        eps = extra.get("eps", self.eps)
        if eps != self.eps:
            import warnings

            warnings.warn(
                f"loading a state saved with eps={eps!r} into an optimizer with eps={self.eps!r}",
                stacklevel=3,
            )
        try:
            return int(extra.get("steps", 0)), int(extra.get("skipped_steps", 0))
        except (TypeError, ValueError):
            raise ValueError(f"the state's step counters are not integers: {extra!r}") from None

    def __repr__(self) -> str:
        inner = repr(self.base_optimizer).replace("\n", "\n    ")
        return (
            f"{type(self).__name__}(normalization={self.normalization!r}, lam={self.lam}, eps={self.eps}, "
            f"base_optimizer={inner})"
        )


class USAM(SAM):
    """Unnormalized SAM: ``ε = ρ ∇L(w)`` (no normalization, no projection).

    The same as ``SAM(..., normalization="none")``; see :class:`SAM` for every argument.

    >>> import torch, samkit
    >>> opt = samkit.USAM(torch.nn.Linear(2, 1).parameters(), torch.optim.SGD, rho=0.01, lr=0.1)
    >>> opt.normalization
    'none'
    """

    def __init__(
        self,
        params: Iterable[Any] | None,
        base_optimizer: type[Optimizer] | Optimizer,
        rho: float = 0.05,
        **kwargs: Any,
    ) -> None:
        if kwargs.get("normalization", "none") != "none" or kwargs.get("lam") not in (None, 0, 0.0):
            raise ValueError("USAM is SAM with normalization='none'; use samkit.SAM for other normalizations")
        kwargs["normalization"] = "none"
        kwargs.pop("lam", None)
        super().__init__(params, base_optimizer, rho, **kwargs)


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


def _check_loaded_groups(base: Optimizer) -> None:
    """After a load: every group holds every option of ``base`` (a group from another optimizer class lacks some)."""
    for i, group in enumerate(base.param_groups):
        missing = sorted(k for k in base.defaults if k not in group)
        if missing:
            raise ValueError(f"parameter group {i} lacks {type(base).__name__}'s options {', '.join(missing)}")


def _check_group(group: dict[str, Any]) -> None:
    check_rho(group["rho"])
    number(group["adaptive_eta"], "adaptive_eta")


def _check_built_base(params: Iterable[Any] | None, base: Optimizer, base_kwargs: dict[str, Any]) -> None:
    """With an already built base optimizer: no ``base_kwargs``, and ``params`` None or exactly its parameters."""
    if base_kwargs:
        raise ValueError(
            f"base_kwargs {sorted(base_kwargs)} given with an already built base optimizer; "
            "pass them to the base optimizer's constructor instead"
        )
    if params is None:
        return
    base_params = [p for g in base.param_groups for p in g["params"]]
    given = _flatten_params(params)
    if {id(p) for p in given} != {id(p) for p in base_params} or len(given) != len(base_params):
        raise ValueError(
            "params must be the same parameters as the built base optimizer's "
            f"({len(given)} given, {len(base_params)} in the base optimizer); or pass params=None"
        )


def _flatten_params(params: Iterable[Any]) -> list[Tensor]:
    out: list[Tensor] = []
    for item in params:
        if isinstance(item, dict):
            out.extend(item["params"] if not isinstance(item["params"], Tensor) else [item["params"]])
        else:
            out.append(item)
    return out
