"""SAM / USAM / unified SAM / ASAM as a ``torch.optim.Optimizer`` wrapping any base optimizer."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from samkit.core import (
    _combine_norms,
    adaptive_scale,
    check_rho,
    global_norm,
    nonfinite,
    perturbation_scale,
    resolve_lam,
    unscale_,
)

__all__ = ["SAM", "USAM", "GSAM", "NonFiniteGradientError", "ProportionalRho", "asam_param_groups"]

_STATE_VERSION = 1


class NonFiniteGradientError(RuntimeError):
    """Raised when a gradient holds inf or NaN and ``on_nonfinite="raise"`` (the default)."""


def _copy_(dst: list[Tensor], src: list[Tensor], foreach: bool) -> None:
    if not dst:
        return
    if foreach:
        torch._foreach_copy_(dst, src)
    else:
        for d, s in zip(dst, src):
            d.copy_(s)


def _add_(dst: list[Tensor], other: list[Tensor], alpha: float, foreach: bool) -> None:
    if not dst:
        return
    if foreach:
        torch._foreach_add_(dst, other, alpha=alpha)
    else:
        for d, o in zip(dst, other):
            d.add_(o, alpha=alpha)


def _mul(a: list[Tensor], b: list[Tensor], foreach: bool) -> list[Tensor]:
    if foreach:
        return list(torch._foreach_mul(a, b))
    return [x * y for x, y in zip(a, b)]


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
        if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
            raise ValueError(f"interval must be an integer >= 1, got {interval!r}")
        if model is not None and not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module or None, got {type(model).__name__}")
        self.model = model
        self.perturbation = perturbation
        self.interval = interval
        self._calls = 0
        self.lam = resolve_lam(normalization, lam)
        self.normalization = normalization
        if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not math.isfinite(eps) or eps < 0:
            raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
        self.eps = float(eps)
        _check_adaptive_eta(adaptive_eta)
        if on_nonfinite not in ("raise", "skip"):
            raise ValueError(f"on_nonfinite must be 'raise' or 'skip', got {on_nonfinite!r}")
        self.on_nonfinite = on_nonfinite
        self.foreach = bool(foreach)
        defaults = dict(rho=rho, adaptive=bool(adaptive), adaptive_eta=float(adaptive_eta))

        if isinstance(base_optimizer, Optimizer):
            if base_kwargs:
                raise ValueError(
                    f"base_kwargs {sorted(base_kwargs)} given with an already built base optimizer; "
                    "pass them to the base optimizer's constructor instead"
                )
            base = base_optimizer
            base_params = [p for g in base.param_groups for p in g["params"]]
            if params is not None:
                given = _flatten_params(params)
                if {id(p) for p in given} != {id(p) for p in base_params} or len(given) != len(base_params):
                    raise ValueError(
                        "params must be the same parameters as the built base optimizer's "
                        f"({len(given)} given, {len(base_params)} in the base optimizer); or pass params=None"
                    )
            for group in base.param_groups:
                for key, value in defaults.items():
                    group.setdefault(key, value)
            super().__init__(base.param_groups, defaults)
            self.base_optimizer = base
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
            check_rho(group["rho"])
            _check_adaptive_eta(group["adaptive_eta"])

        self._backup: dict[Tensor, Tensor] = {}
        self._bn_backup: list[tuple[Tensor, Tensor]] = []
        self._backup_lists: dict[int, tuple[list[Tensor], list[Tensor]]] = {}
        self._perturbed: list[Tensor] = []
        self._perturbed_backups: list[Tensor] = []
        self._stage = "idle"  # "idle" | "perturbed"
        self._skip_pending = False
        self._scaler_recorded = False
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
        for key in ("rho", "adaptive", "adaptive_eta"):
            param_group.setdefault(key, self.defaults[key])
        check_rho(param_group["rho"])
        self.base_optimizer.add_param_group(param_group)
        self.param_groups = self.base_optimizer.param_groups

    def _nonfinite(self, where: str) -> None:
        if self.on_nonfinite == "raise":
            raise NonFiniteGradientError(
                f"non-finite gradient (inf or NaN) in the {where} pass; parameters were left unperturbed "
                "and no step was taken. Pass on_nonfinite='skip' to skip such steps instead."
            )
        self._skip_pending = True

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
        if self._stage == "perturbed":
            raise RuntimeError("first_step() called twice: call second_step() before the next first_step()")
        fe = self.foreach
        self._skip_pending = False
        self._scaler_recorded = False
        if scaler is not None and scaler.is_enabled():
            grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
            if unscale_(grads, 1.0 / scaler.get_scale(), foreach=fe):
                scaler.unscale_(self.base_optimizer)  # records the overflow for scaler.step / scaler.update
                self._scaler_recorded = True
                self._skip_pending = True
                self._stage = "perturbed"
                self._perturbed, self._perturbed_backups = [], []
                self.last_grad_norm = self.last_perturbation_norm = None
                return
        if self.perturbation == "global":
            self._all_reduce_grads()
        per_group = []  # (group, params, vectors used for the norm, ASAM scales or None)
        group_norms = []
        for group in self.param_groups:
            rho = check_rho(group["rho"])
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            if group["adaptive"]:
                scales = [adaptive_scale(p, group["adaptive_eta"]) for p in params]
                vecs = _mul(scales, grads, fe)
            else:
                scales, vecs = None, grads
            per_group.append((group, rho, params, vecs, scales))
            group_norms.append(global_norm(vecs, foreach=fe))

        self._stage = "perturbed"
        self._perturbed = []
        self._perturbed_backups = []
        if not per_group:
            self.last_grad_norm = self.last_perturbation_norm = None
            return
        if len(group_norms) == 1:
            norms = group_norms[0].unsqueeze(0)
            norm = group_norms[0]
        else:
            device = group_norms[0].device
            dtype = torch.float64 if any(n.dtype == torch.float64 for n in group_norms) else torch.float32
            norms = torch.stack([n.to(device, dtype) for n in group_norms])
            norm = _combine_norms(norms)
        if not math.isfinite(float(norm)):
            self._stage = "idle"
            self._nonfinite("first")  # raises, or marks the step skipped
            self._stage = "perturbed"
            self.last_grad_norm = norm
            return

        eps_norms = []
        all_params: list[Tensor] = []
        all_backups: list[Tensor] = []
        for (_group, rho, params, vecs, scales), gnorm in zip(per_group, norms):
            coef = float(
                perturbation_scale(
                    norm,
                    rho,
                    normalization=self.normalization,
                    lam=self.lam if self.normalization == "unified" else None,
                    eps=self.eps,
                )
            )
            backups = self._backups_for(params)
            _copy_(backups, params, fe)
            if scales is None:
                _add_(params, vecs, coef, fe)
                eps_norms.append(abs(coef) * gnorm)
            else:
                e = _mul(scales, vecs, fe)  # T² g
                _add_(params, e, coef, fe)
                eps_norms.append(abs(coef) * global_norm(e, foreach=fe).to(norm.device, norm.dtype))
            all_params.extend(params)
            all_backups.extend(backups)
        self._perturbed = all_params
        self._perturbed_backups = all_backups
        self._snapshot_bn()
        self._after_perturb(per_group, norm)
        self.last_grad_norm = norm
        self.last_perturbation_norm = eps_norms[0] if len(eps_norms) == 1 else _combine_norms(torch.stack(eps_norms))
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False, *, scaler: Any = None) -> None:
        """Restore the weights and take the base optimizer's step with the gradients now in ``.grad``.

        With ``scaler``, the second-pass gradients are unscaled by ``scaler.unscale_`` and the step goes
        through ``scaler.step(base_optimizer)``, which skips it on inf/NaN; call ``scaler.update()`` after.
        """
        if self._stage != "perturbed":
            raise RuntimeError(
                "second_step() called before first_step(): call first_step() after the first backward pass"
            )
        self._restore()
        use_scaler = scaler is not None and scaler.is_enabled()
        if use_scaler:
            if not self._scaler_recorded:
                scaler.unscale_(self.base_optimizer)
                grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
                if nonfinite(grads, foreach=self.foreach):
                    self._skip_pending = True
            if not self._skip_pending:
                self._before_base_step()
            scaler.step(self.base_optimizer)  # skips the base step when the scaler saw inf/NaN
        elif not self._skip_pending:
            grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
            if nonfinite(grads, foreach=self.foreach):
                self._nonfinite("second")
            if not self._skip_pending:
                self._before_base_step()
                self.base_optimizer.step()
        if self._skip_pending:
            self._skip_pending = False
            self.skipped_steps += 1
        else:
            self.steps += 1
        self._scaler_recorded = False
        self._opt_called = True  # tells LR schedulers attached to this object that a step happened
        if zero_grad:
            self.zero_grad()

    def _restore(self) -> None:
        """Put back the weights (and BN statistics) of before the perturbation, in place."""
        # Exactly the parameters perturbed in this step (storage is never rebound), including those that
        # got no gradient in the second pass.
        _copy_(self._perturbed, self._perturbed_backups, self.foreach)
        self._perturbed = []
        self._perturbed_backups = []
        for buf, saved in self._bn_backup:
            buf.copy_(saved)
        self._stage = "idle"

    # hooks for variants (GSAM)
    def _after_perturb(self, per_group: list, norm: Tensor) -> None:
        pass

    def _before_base_step(self) -> None:
        pass

    def _snapshot_bn(self) -> None:
        if self.model is None:
            self._bn_backup = []
            return
        bufs = []
        for m in self.model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
                bufs.extend(b for b in (m.running_mean, m.running_var, m.num_batches_tracked) if b is not None)
        old = {id(b): saved for b, saved in self._bn_backup}
        pairs = []
        for b in bufs:
            saved = old.get(id(b))
            if saved is None or saved.shape != b.shape or saved.dtype != b.dtype:
                saved = torch.empty_like(b)
            saved.copy_(b)
            pairs.append((b, saved))
        self._bn_backup = pairs

    def _all_reduce_grads(self) -> None:
        """``perturbation="global"`` without DDP's own all-reduce: average the first-pass gradient over ranks."""
        import torch.distributed as dist

        ddp = isinstance(self.model, torch.nn.parallel.DistributedDataParallel)
        if ddp or not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return
        world = dist.get_world_size()
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is not None:
                    dist.all_reduce(p.grad)
                    p.grad.div_(world)

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
        if self._skip_pending:
            self.second_step(scaler=scaler)
            return loss
        try:
            closure()
        except BaseException:
            self._restore_after_error()
            raise
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
            weights = [float(_batch_size(b)) for b in batches]
        if len(weights) != len(batches) or any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(f"weights must be {len(batches)} numbers >= 0 with a positive sum, got {weights!r}")
        total = float(sum(weights))
        ws = [float(w) / total for w in weights]

        def backward(batch: Any, weight: float) -> Tensor:
            with torch.enable_grad():
                loss = loss_fn(batch)
                if loss.dim() != 0:
                    raise ValueError(f"loss_fn must return a scalar loss, got shape {tuple(loss.shape)}")
                (loss * weight).backward()
            return loss.detach()

        self.zero_grad()
        self._calls += 1
        if mode == "full":
            with self.first_pass():
                loss = sum(w * backward(b, w) for b, w in zip(batches, ws))
            self.first_step(zero_grad=True)
            if not self._skip_pending:
                try:
                    for b, w in zip(batches, ws):
                        backward(b, w)
                except BaseException:
                    self._restore_after_error()
                    raise
            self.second_step()
            return loss

        params = [p for g in self.param_groups for p in g["params"]]
        accum: list[Tensor | None] = [None] * len(params)
        loss = torch.zeros(())
        for b, w in zip(batches, ws):
            self.zero_grad()
            with self.first_pass():
                loss = loss + w * backward(b, 1.0)
            self.first_step(zero_grad=True)
            if self._skip_pending:  # on_nonfinite="skip": the whole step is skipped
                self.second_step()
                return loss
            try:
                backward(b, 1.0)
            except BaseException:
                self._restore_after_error()
                raise
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

    def _plain_step(self, closure: Callable[[], Any], scaler: Any) -> Any:
        """The base optimizer's step alone (the off-steps of ``interval`` SAM), with the same checks."""
        loss = closure()
        self._step_unperturbed(scaler)
        return loss

    @torch.no_grad()
    def _step_unperturbed(self, scaler: Any = None) -> None:
        """The base step with the gradients in ``.grad`` and nothing to restore, through :meth:`second_step`'s
        checks (finite gradients, scaler, counters)."""
        self._stage = "perturbed"
        self._perturbed, self._perturbed_backups, self._bn_backup = [], [], []
        self._skip_pending = False
        self._scaler_recorded = False
        self.second_step(scaler=scaler)

    def _restore_after_error(self) -> None:
        with torch.no_grad():
            self._restore()
        self._skip_pending = False

    def _backups_for(self, params: list[Tensor]) -> list[Tensor]:
        """Persistent backup buffers (allocated once per parameter, reused every step).

        The list for the last seen parameter list is cached, so a steady training loop does no per-tensor
        Python work here beyond an identity check.
        """
        cached = self._backup_lists.get(id(params[0]))
        if cached is not None and len(cached[0]) == len(params) and all(a is b for a, b in zip(cached[0], params)):
            return cached[1]
        out = []
        for p in params:
            buf = self._backup.get(p)
            if buf is None or buf.shape != p.shape or buf.dtype != p.dtype or buf.device != p.device:
                buf = self._backup[p] = torch.empty_like(p, memory_format=torch.preserve_format)
            out.append(buf)
        self._backup_lists[id(params[0])] = (list(params), out)
        return out

    @property
    def is_perturbed(self) -> bool:
        """True between :meth:`first_step` and :meth:`second_step`."""
        return self._stage == "perturbed"

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        """The base optimizer's ``state_dict()`` (groups include ``rho``) plus samkit's counters.

        Transient buffers (the weight backup) are not saved. Raises between first and second step.
        """
        if self._stage == "perturbed":
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
        """Load a state saved by :meth:`state_dict` (a plain base-optimizer state dict is accepted too)."""
        if self._stage == "perturbed":
            raise RuntimeError("load_state_dict() called between first_step() and second_step()")
        state_dict = dict(state_dict)
        extra = state_dict.pop("samkit", None)
        self.base_optimizer.load_state_dict(state_dict)
        self.param_groups = self.base_optimizer.param_groups
        for group in self.param_groups:
            for key in ("rho", "adaptive", "adaptive_eta"):
                group.setdefault(key, self.defaults[key])
        if extra is not None:
            self.steps = int(extra.get("steps", 0))
            self.skipped_steps = int(extra.get("skipped_steps", 0))

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


class GSAM(SAM):
    r"""Surrogate Gap Guided SAM (GSAM; Zhuang et al., ICLR 2022, "Surrogate Gap Minimization Improves
    Sharpness-Aware Training").

    With ``g = ∇L(w)`` (first pass) and ``g_p = ∇L(w + ε)``, ``ε = ρ g/‖g‖`` (second pass), GSAM splits
    ``g`` into its component along ``g_p`` and the rest, ``g_⊥ = g − (⟨g, g_p⟩ / ‖g_p‖²) g_p``, and descends
    along ``d = g_p − α g_⊥`` (minimising the perturbed loss while ascending the surrogate gap orthogonally).
    ``α = 0`` is SAM. The paper schedules ρ with the learning rate: use :class:`ProportionalRho`.
    Every other argument is :class:`SAM`'s (any ``normalization``; the paper's is ``"l2"``).

    >>> import torch, samkit
    >>> opt = samkit.GSAM(torch.nn.Linear(2, 1).parameters(), torch.optim.SGD, rho=0.05, alpha=0.1, lr=0.1)
    >>> opt.alpha
    0.1
    """

    def __init__(
        self,
        params: Iterable[Any] | None,
        base_optimizer: type[Optimizer] | Optimizer,
        rho: float = 0.05,
        alpha: float = 0.1,
        **kwargs: Any,
    ) -> None:
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha < 0:
            raise ValueError(f"alpha must be a finite number >= 0, got {alpha!r}")
        self.alpha = float(alpha)
        self._first_grads: dict[Tensor, Tensor] = {}
        self._gsam_params: list[Tensor] = []
        super().__init__(params, base_optimizer, rho, **kwargs)

    def _after_perturb(self, per_group: list, norm: Tensor) -> None:
        params = [p for _, _, ps, _, _ in per_group for p in ps]
        bufs = []
        for p in params:
            buf = self._first_grads.get(p)
            if buf is None or buf.shape != p.shape or buf.dtype != p.grad.dtype:
                buf = self._first_grads[p] = torch.empty_like(p.grad)
            bufs.append(buf)
        _copy_(bufs, [p.grad for p in params], self.foreach)
        self._gsam_params = params

    def _before_base_step(self) -> None:
        pairs = [(p, self._first_grads[p]) for p in self._gsam_params if p.grad is not None]
        self._gsam_params = []
        if not pairs or self.alpha == 0.0:
            return
        gp = [p.grad for p, _ in pairs]
        g = [b for _, b in pairs]
        dot = torch.stack([(a * b).sum() for a, b in zip(gp, g)]).sum()
        gp_norm = global_norm(gp, foreach=self.foreach)
        if float(gp_norm) == 0.0:
            coef = 0.0
        else:
            coef = float(dot / gp_norm.to(dot.dtype) ** 2)
        # d = g_p − α (g − coef g_p) = (1 + α coef) g_p − α g
        if self.foreach:
            torch._foreach_mul_(gp, 1.0 + self.alpha * coef)
            torch._foreach_add_(gp, g, alpha=-self.alpha)
        else:
            for a, b in zip(gp, g):
                a.mul_(1.0 + self.alpha * coef).add_(b, alpha=-self.alpha)


def _batch_size(batch: Any) -> int:
    first = batch
    while isinstance(first, (list, tuple)) and first:
        first = first[0]
    if isinstance(first, dict) and first:
        first = next(iter(first.values()))
    if isinstance(first, Tensor) and first.dim() > 0:
        return int(first.shape[0])
    return 1


class ProportionalRho:
    """Keep ``rho`` proportional to the learning rate: ``group["rho"] = ratio · group["lr"]``.

    Call :meth:`step` after your LR scheduler's ``step()``. The ratio defaults to each group's
    ``rho / lr`` at construction, so ρ follows any schedule of the learning rate.

    >>> import torch, samkit
    >>> opt = samkit.SAM(torch.nn.Linear(2, 1).parameters(), torch.optim.SGD, rho=0.05, lr=0.1)
    >>> follow = samkit.ProportionalRho(opt)           # ratio rho / lr = 0.5
    >>> opt.param_groups[0]["lr"] = 0.05                # what an LR scheduler does
    >>> follow.step()
    >>> round(opt.param_groups[0]["rho"], 6)
    0.025
    """

    def __init__(self, optimizer: SAM, ratio: float | None = None) -> None:
        self.optimizer = optimizer
        if ratio is not None:
            if not math.isfinite(ratio) or ratio < 0:
                raise ValueError(f"ratio must be a finite number >= 0, got {ratio!r}")
            self.ratios = [float(ratio)] * len(optimizer.param_groups)
        else:
            self.ratios = []
            for g in optimizer.param_groups:
                if float(g["lr"]) == 0:
                    raise ValueError("cannot infer rho/lr with lr = 0; pass ratio explicitly")
                self.ratios.append(float(g["rho"]) / float(g["lr"]))

    def step(self) -> None:
        for ratio, g in zip(self.ratios, self.optimizer.param_groups):
            g["rho"] = ratio * float(g["lr"])

    def state_dict(self) -> dict[str, Any]:
        return {"ratios": list(self.ratios)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ratios = [float(r) for r in state["ratios"]]


def asam_param_groups(
    model: torch.nn.Module, *, exclude_bias: bool = True, exclude_norm: bool = True, **group_kwargs: Any
) -> list[dict[str, Any]]:
    """Two parameter groups for ASAM: weights with ``adaptive=True``, the excluded ones with ``adaptive=False``.

    Excluded: biases (parameter names ending in ``bias``) and the parameters of normalization layers
    (BatchNorm, LayerNorm, GroupNorm, InstanceNorm, LocalResponseNorm, RMSNorm).

    >>> import torch, samkit
    >>> m = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.LayerNorm(2))
    >>> [len(g["params"]) for g in samkit.asam_param_groups(m)]
    [1, 3]
    """
    norm_types: tuple[type, ...] = (
        torch.nn.modules.batchnorm._NormBase,
        torch.nn.LayerNorm,
        torch.nn.GroupNorm,
        torch.nn.LocalResponseNorm,
    )
    if hasattr(torch.nn, "RMSNorm"):
        norm_types = norm_types + (torch.nn.RMSNorm,)
    adaptive, plain = [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            if (exclude_norm and isinstance(module, norm_types)) or (exclude_bias and name.endswith("bias")):
                plain.append(p)
            else:
                adaptive.append(p)
    groups = []
    if adaptive:
        groups.append({"params": adaptive, "adaptive": True, **group_kwargs})
    if plain:
        groups.append({"params": plain, "adaptive": False, **group_kwargs})
    return groups


def _flatten_params(params: Iterable[Any]) -> list[Tensor]:
    out: list[Tensor] = []
    for item in params:
        if isinstance(item, dict):
            out.extend(item["params"] if not isinstance(item["params"], Tensor) else [item["params"]])
        else:
            out.append(item)
    return out


def _check_adaptive_eta(value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"adaptive_eta must be a finite number >= 0, got {value!r}")
