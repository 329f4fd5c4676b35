"""SAM / USAM / unified SAM / ASAM as a ``torch.optim.Optimizer`` wrapping any base optimizer.

Like ``torch.optim.SGD``: the arguments are checked once, each step collects its tensors (:meth:`SAM._collect`) and
steps. The rule is :func:`samkit.core.perturb`; the list operations (chosen once by ``foreach``) are
:mod:`~samkit.optim.ops`; accumulation, checkpoints, BatchNorm and DDP have their own modules in :mod:`samkit.optim`.
A variant overrides the hooks :meth:`SAM.after_perturb` and :meth:`SAM.before_base_step` (as :class:`samkit.GSAM`).
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from samkit._checks import integer, number
from samkit._compat import mark_stepped
from samkit.core import adaptive_scale, check_rho, resolve_lam
from samkit.optim import accumulation, checkpoint, integrations, sharded
from samkit.optim.fused import fused_step
from samkit.optim.groups import SAMGroup, check_built_base, check_group, check_some_perturbed
from samkit.optim.ops import ListCache, backup_and_perturb, list_ops
from samkit.optim.schedule import check_start, sam_due
from samkit.optim.steps import StepState as _Step

__all__ = ["SAM", "SAMGroup", "NonFiniteGradientError"]

_is_none = functools.partial(operator.is_, None)


class NonFiniteGradientError(RuntimeError):
    """Raised when a gradient holds inf or NaN and ``on_nonfinite="raise"`` (the default)."""


class SAM(Optimizer):
    r"""Sharpness-Aware Minimization with normalization as a first-class knob.

    Each step perturbs the weights by ε, takes the gradient there, restores the weights and lets the base optimizer
    step with that gradient: ``w ← base_step(w, ∇L(w + ε(∇L(w))))``. The perturbation is :mod:`samkit.core`'s:

    * ``normalization="l2"`` (SAM, Foret et al. 2021): ``ε = ρ g / (‖g‖ + eps)``;
    * ``normalization="none"`` (USAM): ``ε = ρ g`` (no projection, no clipping);
    * ``normalization="unified"`` with ``lam=λ`` (Oikonomou & Loizou 2025): ``ε = ρ((1−λ) g + λ g/‖g‖)``;
    * ``adaptive=True`` (ASAM, Kwon et al. 2021): with ``T = |w| + adaptive_eta`` elementwise, ``g`` is replaced by
      ``T g`` in the norm and ``ε = c · T² g`` (official ASAM formula, η = 0.01). ``adaptive`` and ``adaptive_eta``
      are per parameter group, so biases and normalization weights can be excluded (:func:`asam_param_groups`).

    ``‖g‖`` is the global norm over every perturbed parameter with a gradient, across all groups, computed
    scale-safely in at least float32 (bfloat16 and float16 gradients too). ``rho`` may differ per group
    (``group["rho"]``, mutable, so it can be scheduled); the norm stays global. A group with ``perturb=False`` is
    neither perturbed nor counted in ``‖g‖`` (SAM on a subset, e.g. SAM-ON: :func:`sam_on_param_groups`), unlike
    ``rho=0``, which keeps the group in the norm; it still takes the base step with its gradient at the perturbed
    point. A zero gradient gives no perturbation.

    Args:
        params: iterable of parameters or parameter-group dicts (groups may set ``rho``, ``adaptive``, ``adaptive_eta``,
            ``perturb`` and any base-optimizer option). With an already built ``base_optimizer``, ``params`` may be
            ``None`` or must hold exactly that optimizer's parameters.
        base_optimizer: an optimizer class (built as ``base_optimizer(param_groups, **base_kwargs)``) or an
            optimizer instance. Its ``param_groups`` are shared with this object.
        rho: neighbourhood size ρ ≥ 0. ``rho=0`` reproduces the base optimizer bit for bit.
        normalization: ``"l2"`` (SAM), ``"none"`` (USAM) or ``"unified"`` (needs ``lam``).
        lam: λ ∈ [0, 1] for ``"unified"``.
        adaptive: ASAM scaling (default for groups that do not set it).
        adaptive_eta: ASAM's η in ``T = |w| + η``.
        eps: added to ‖g‖ in the normalized part. ``eps=0`` is exact normalization.
        foreach: use the multi-tensor (``torch._foreach_*``) kernels; ``False`` runs the single-tensor reference
            loop, which gives identical results (the choice is made once: ``self.ops``).
        fused: opt-in flat buffers per device and dtype (:mod:`samkit.optim.fused`; needs ``foreach``): a few
            kernels per step instead of one per tensor; equal to ``fused=False`` to float rounding, not bit for bit.
        on_nonfinite: what to do when a gradient (either pass) holds inf/NaN: ``"raise"`` a
            :class:`NonFiniteGradientError` (parameters are left unperturbed), or ``"skip"`` the step (parameters
            and base-optimizer state untouched; counted in ``skipped_steps``).
        model: the model being trained (optional). When given, (1) the BatchNorm running statistics are those of
            the first pass: the second forward does not move them (right for ``momentum=None`` too); (2) with a
            ``DistributedDataParallel`` model and ``perturbation="local"``, :meth:`step` runs the first forward and
            backward under ``model.no_sync()`` (:mod:`samkit.optim.integrations`).
        perturbation: ``"local"`` (default; each replica perturbs with its own gradient, Foret et al.'s m-sharpness
            with m = the per-replica batch) or ``"global"`` (the first-pass gradient is averaged over replicas
            before the norm: by DDP, an explicit all-reduce, or FSDP2's reduce-scatter: :mod:`samkit.optim.sharded`).
        interval: take the SAM step every ``interval``-th call of :meth:`step` / :meth:`step_accumulated` and the
            plain base step otherwise ("interval SAM", MosaicML Composer's SAM method card). 1 means always SAM.
        start: late SAM (Zhou et al., ICLR 2025): the first ``start`` calls take the base step alone, SAM after
            (then every ``interval``-th call, the first one after ``start`` included: :mod:`samkit.optim.schedule`).
            The count of calls is in :meth:`state_dict`, so a resumed run switches at the same step.
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

    One host synchronisation per pass reads the gradient norm (to detect non-finite gradients). A variant overrides
    :meth:`after_perturb` and :meth:`before_base_step` and uses ``self.ops``; :func:`samkit.optim.registry.register`
    makes it one of ``samkit train``'s optimizers.
    """

    #: the options SAM adds to every parameter group
    GROUP_KEYS = ("rho", "adaptive", "adaptive_eta", "perturb")

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
        fused: bool = False,
        on_nonfinite: str = "raise",
        model: torch.nn.Module | None = None,
        perturbation: str = "local",
        interval: int = 1,
        start: int = 0,
        **base_kwargs: Any,
    ) -> None:
        rho = check_rho(rho)
        if perturbation not in ("local", "global"):
            raise ValueError(f"perturbation must be 'local' or 'global', got {perturbation!r}")
        self.interval, self.start = integer(interval, "interval", minimum=1), check_start(start)
        if model is not None and not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module or None, got {type(model).__name__}")
        self.model = model
        self.perturbation = perturbation
        self.lam = resolve_lam(normalization, lam)
        self.normalization = normalization
        self.eps = number(eps, "eps")
        adaptive_eta = number(adaptive_eta, "adaptive_eta")
        if on_nonfinite not in ("raise", "skip"):
            raise ValueError(f"on_nonfinite must be 'raise' or 'skip', got {on_nonfinite!r}")
        self.on_nonfinite = on_nonfinite
        self.foreach = bool(foreach)
        self._fused = fused_step(fused, self.foreach)  # the fused step (fused=True), or None
        self.ops = list_ops(self.foreach) if self._fused is None else self._fused.ops  #: chosen once (:mod:`.ops`)
        defaults = dict(rho=rho, adaptive=bool(adaptive), adaptive_eta=adaptive_eta, perturb=True)

        if isinstance(base_optimizer, Optimizer):
            check_built_base(params, base_optimizer, base_kwargs)
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
            check_group(group)
        check_some_perturbed(self.param_groups)
        self.ops = sharded.sharded_ops(self.ops, self.param_groups, perturbation, self._fused is not None)  # FSDP2
        self.steps = self.skipped_steps = 0  #: steps taken, and skipped (non-finite gradients, scaler overflows)
        self._calls = 0  # calls of step() and step_accumulated() (interval SAM counts them)
        self._step: _Step | None = None  # the step between first_step and second_step
        self._last = _Step()  # the last step begun, for its norms
        self._cache = ListCache()  # per parameter list: its device/dtype layout and backup buffers

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group to both this optimizer and the base optimizer (they share groups)."""
        if not hasattr(self, "base_optimizer"):  # called from Optimizer.__init__
            return super().add_param_group(param_group)
        for key in self.GROUP_KEYS:
            param_group.setdefault(key, self.defaults[key])
        check_group(param_group)
        self.base_optimizer.add_param_group(param_group)
        self.param_groups = self.base_optimizer.param_groups

    # ------------------------------------------------------------------ collect
    def _grads(self) -> list[Tensor]:
        """Every gradient now in ``.grad``, group by group."""
        return [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]

    def _with_grad(self) -> list[Tensor]:
        """Every parameter with a gradient, group by group (the list of the one group itself when it can be)."""
        groups = self.param_groups
        if len(groups) == 1 and not any(map(_is_none, (p.grad for p in groups[0]["params"]))):
            return groups[0]["params"]
        return [p for g in groups for p in g["params"] if p.grad is not None]

    def _collect(self) -> list[SAMGroup]:
        """The perturbed groups that have gradients, with their ρ (checked: it may be scheduled) and ASAM scales."""
        groups = []
        for group in self.param_groups:
            if not group["perturb"]:
                continue
            params = group["params"]
            grads = [p.grad for p in params]
            if any(map(_is_none, grads)):  # (the usual case, every parameter has a gradient, builds no new list)
                params = [p for p, g in zip(params, grads) if g is not None]
                grads = [g for g in grads if g is not None]
            if not params:
                continue
            rho = check_rho(group["rho"])
            scales = [adaptive_scale(p, group["adaptive_eta"]) for p in params] if group["adaptive"] else None
            groups.append(SAMGroup(params, grads, rho, scales))
        return groups

    # ------------------------------------------------------------------ the two steps
    @torch.no_grad()
    def first_step(self, zero_grad: bool = False, *, scaler: Any = None) -> None:
        """Perturb the weights to ``w + ε`` using the gradients now in ``.grad`` (the first pass).

        With a ``torch.amp.GradScaler`` as ``scaler``, the first-pass gradients (of ``scaler.scale(loss)``) are
        unscaled here before ε is computed (essential for USAM, whose ε = ρg would otherwise grow with the loss
        scale). An inf/NaN marks the step as skipped: nothing is perturbed and the scaler records the overflow, so
        ``second_step(scaler=scaler)`` skips the base step and ``scaler.update()`` lowers the scale.
        """
        if self._step is not None:
            raise RuntimeError("first_step() called twice: call second_step() before the next first_step()")
        if scaler is not None and scaler.is_enabled():
            if self.ops.unscale_(self._grads(), 1.0 / scaler.get_scale()):
                scaler.unscale_(self.base_optimizer)  # records the overflow for scaler.step / scaler.update
                self._step = self._last = _Step(skip=True, scaler_recorded=True)
                return
        if self.perturbation == "global":
            integrations.all_reduce_mean(self.model, self._grads())
        groups = self._collect()
        if not groups:  # nothing to perturb; the BN statistics are still those of this first pass
            self._step = self._last = _Step()
            self._save_bn(self._step)
            return
        fused = self._fused if self._fused is not None and self._fused.prepare(groups) else None
        rule = fused.perturb(groups, self.lam, self.eps) if fused is not None else None
        if rule is None:  # the rule on the lists (fused=False, or where the flat norm cannot decide)
            params = groups[0].params if len(groups) == 1 else [p for g in groups for p in g.params]
            grads, rhos, scales = [g.grads for g in groups], [g.rho for g in groups], [g.scales for g in groups]
            rule = self.ops.perturb(grads, rhos, self.lam, self.eps, scales, self._cache.layout(params))
        if not rule.finite:
            self._nonfinite("first")  # raises, or the step is skipped
            self._step = self._last = _Step(skip=True, grad_norm=rule.grad_norm)
            return
        step = self._step = self._last = _Step(grad_norm=rule.grad_norm, perturbation_norm=rule.norm)
        apply = fused.apply if fused is not None else functools.partial(backup_and_perturb, self.ops, self._cache)
        step.changed, step.saved = apply([g.params for g in groups], rule)  # the backup and ε
        self._save_bn(step)
        self.after_perturb(groups)
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False, *, scaler: Any = None) -> None:
        """Restore the weights and take the base optimizer's step with the gradients now in ``.grad``.

        With ``scaler``, the second-pass gradients are unscaled by ``scaler.unscale_`` and the step goes through
        ``scaler.step(base_optimizer)``, which skips it on inf/NaN; call ``scaler.update()`` after.
        """
        step = self._step
        if step is None:
            raise RuntimeError(
                "second_step() called before first_step(): call first_step() after the first backward pass"
            )
        self._restore()
        skip = step.skip
        if scaler is not None and scaler.is_enabled():
            if not step.scaler_recorded:
                scaler.unscale_(self.base_optimizer)
                skip = skip or self.ops.nonfinite(self._grads())
            if not skip:
                self.before_base_step()
            scaler.step(self.base_optimizer)  # skips the base step when the scaler saw inf/NaN
        elif not skip:
            params = self._with_grad()
            if self.ops.nonfinite([p.grad for p in params if p.grad is not None], self._cache.layout(params)):
                self._nonfinite("second")  # raises, or the step is skipped
                skip = True
            else:
                self.before_base_step()
                self.base_optimizer.step()
        if skip:
            self.skipped_steps += 1
        else:
            self.steps += 1
        mark_stepped(self)  # tells LR schedulers attached to this object that a step happened
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None, *, scaler: Any = None) -> Any:  # type: ignore[override]
        """One full SAM step. ``closure`` must zero the grads, run forward and backward, and return the loss.

        Returns the loss of the first closure call (at the unperturbed weights). With a GradScaler, the closure
        backpropagates ``scaler.scale(loss)`` and you call ``scaler.update()`` after this step (``examples/bn_amp.py``).
        """
        if closure is None:
            raise RuntimeError(
                "SAM.step() needs a closure that zeroes the gradients, runs the forward and backward pass and "
                "returns the loss; or use first_step() / second_step()"
            )
        closure = torch.enable_grad()(closure)
        self._calls += 1
        if not sam_due(self._calls, self.start, self.interval):  # late or interval SAM: the base step alone
            loss = closure()
            self._step_unperturbed(scaler)
            return loss
        with self.first_pass():
            loss = closure()
        self.first_step(zero_grad=True, scaler=scaler)
        if not self.skipping:
            self.second_pass(closure)
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
        """One SAM step over a batch given as micro-batches (gradient accumulation); returns the weighted mean loss.

        ``loss_fn(micro_batch)`` returns the mean loss of that micro-batch (this method calls ``backward``); the
        ``weights`` default to the micro-batch sizes. ``mode="full"``: ε from the gradient accumulated over all
        micro-batches, the descent gradient accumulated at ``w + ε`` (SAM on the full batch). ``mode="m-sharpness"``:
        each micro-batch gets its own ε; the descent gradients are averaged (:mod:`samkit.optim.accumulation`).

        >>> import torch, samkit
        >>> m = torch.nn.Linear(3, 1)
        >>> opt = samkit.SAM(m.parameters(), torch.optim.SGD, rho=0.05, lr=0.1)
        >>> x, y = torch.randn(8, 3), torch.randn(8, 1)
        >>> chunks = [(x[:4], y[:4]), (x[4:], y[4:])]
        >>> loss = opt.step_accumulated(lambda b: torch.nn.functional.mse_loss(m(b[0]), b[1]), chunks)
        """
        return accumulation.step_accumulated(self, loss_fn, micro_batches, mode, weights)

    def first_pass(self) -> Any:
        """Context manager for the first forward and backward of the two-step API.

        With a DDP model and ``perturbation="local"`` it is ``model.no_sync()`` (the forward must be inside too, or
        DDP still all-reduces); otherwise it does nothing (:mod:`samkit.optim.integrations` has an example).
        """
        return integrations.first_pass_context(self.model, self.perturbation)

    # ------------------------------------------------------------------ hooks for variants
    def after_perturb(self, groups: Sequence[SAMGroup]) -> None:
        """Hook: runs in :meth:`first_step` once the weights are at ``w + ε``, before ``zero_grad``.

        ``groups`` (:class:`~samkit.optim.groups.SAMGroup`) hold the perturbed parameters and their first-pass
        gradients, still in ``.grad`` (unscaled under a GradScaler). A variant may read them and keep what it needs
        (GSAM keeps ``g``); it must not change the weights or the gradients. Not called for a skipped step or when
        nothing has a gradient. The default does nothing."""

    def before_base_step(self) -> None:
        """Hook: runs in :meth:`second_step` just before the base optimizer steps.

        The weights are back at ``w``; ``.grad`` holds the second-pass gradients (taken at ``w + ε``, unscaled under a
        GradScaler), all finite. A variant may rewrite ``.grad`` in place to change the descent direction (GSAM
        does). Not called for a skipped step. The default does nothing."""

    def _restore(self) -> None:
        """Put back, in place, exactly the tensors perturbed in this step (weights, BN statistics); end the step."""
        step, self._step = self._step, None
        if step is not None:
            self.ops.copy_(step.changed, step.saved)

    def _save_bn(self, step: _Step) -> None:
        """Add the model's BatchNorm running statistics to what :meth:`_restore` puts back."""
        stats = integrations.batchnorm_statistics(self.model)
        if stats:
            saved = self._cache.backups(stats)
            self.ops.copy_(saved, stats)
            step.changed += stats
            step.saved += saved

    def _nonfinite(self, where: str) -> None:
        """A non-finite gradient in the ``where`` pass: raise (``on_nonfinite="raise"``) or return (skip the step)."""
        if self.on_nonfinite == "raise":
            raise NonFiniteGradientError(
                f"non-finite gradient (inf or NaN) in the {where} pass; parameters were left unperturbed "
                "and no step was taken. Pass on_nonfinite='skip' to skip such steps instead."
            )

    def second_pass(self, run: Callable[[], Any]) -> None:
        """Run ``run()``, the passes at ``w + ε`` (for trainers that drive them); on any error, restore w first."""
        try:
            run()
        except BaseException:
            self._restore()
            raise

    @torch.no_grad()
    def _step_unperturbed(self, scaler: Any = None) -> None:
        self._step = _Step()  # the base step with nothing to restore, through second_step's checks and counters
        self.second_step(scaler=scaler)

    @property
    def skipping(self) -> bool:
        """True when the step in progress will be skipped (``on_nonfinite="skip"`` saw inf/NaN, or a GradScaler
        overflow): a trainer that drives the passes itself then runs no second pass (see :meth:`step`)."""
        return self._step is not None and self._step.skip

    @property
    def is_perturbed(self) -> bool:
        """True between :meth:`first_step` and :meth:`second_step`."""
        return self._step is not None

    @property
    def last_grad_norm(self) -> Tensor | None:
        """‖g‖ of the last first pass (the norm actually used: of ``T g`` for ASAM groups), a 0-dim tensor."""
        return self._last.grad_norm

    @property
    def last_perturbation_norm(self) -> Tensor | None:
        """‖ε‖ of the last perturbation, a 0-dim tensor (None when the last first pass perturbed nothing)."""
        return self._last.perturbation_norm

    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        """The base optimizer's ``state_dict()`` plus samkit's counters and rule; raises between the two steps."""
        return checkpoint.save(self)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state saved by :meth:`state_dict` (a plain base-optimizer state dict is accepted too).

        A state saved with another rule (``normalization``, ``lam``) or that the base optimizer cannot take is a
        :class:`ValueError`, and this optimizer is left unchanged; another ``eps`` only warns. To reuse only the base
        optimizer's state, load it without its ``"samkit"`` entry (:mod:`samkit.optim.checkpoint` has an example).
        """
        checkpoint.load(self, state_dict)

    def __repr__(self) -> str:
        inner, rule = repr(self.base_optimizer).replace("\n", "\n    "), f"lam={self.lam}, eps={self.eps}"
        return f"{type(self).__name__}(normalization={self.normalization!r}, {rule}, base_optimizer={inner})"
