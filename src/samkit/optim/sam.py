"""SAM / USAM / unified SAM / ASAM as a ``torch.optim.Optimizer`` wrapping any base optimizer."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
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
)

__all__ = ["SAM", "USAM", "NonFiniteGradientError", "ProportionalRho", "asam_param_groups"]

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
        **base_kwargs: Any,
    ) -> None:
        rho = check_rho(rho)
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
        self._backup_lists: dict[int, tuple[list[Tensor], list[Tensor]]] = {}
        self._perturbed: list[Tensor] = []
        self._perturbed_backups: list[Tensor] = []
        self._stage = "idle"  # "idle" | "perturbed"
        self._skip_pending = False
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
    def first_step(self, zero_grad: bool = False) -> None:
        """Perturb the weights to ``w + ε`` using the gradients now in ``.grad`` (the first pass)."""
        if self._stage == "perturbed":
            raise RuntimeError("first_step() called twice: call second_step() before the next first_step()")
        fe = self.foreach
        self._skip_pending = False
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
                eps_norms.append(abs(coef) * global_norm(e, foreach=fe).to(device, dtype))
            all_params.extend(params)
            all_backups.extend(backups)
        self._perturbed = all_params
        self._perturbed_backups = all_backups
        self.last_grad_norm = norm
        self.last_perturbation_norm = _combine_norms(torch.stack(eps_norms))
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False) -> None:
        """Restore the weights and take the base optimizer's step with the gradients now in ``.grad``."""
        if self._stage != "perturbed":
            raise RuntimeError(
                "second_step() called before first_step(): call first_step() after the first backward pass"
            )
        # Restore exactly the parameters perturbed in this step (in place; storage is never rebound),
        # including those that got no gradient in the second pass.
        _copy_(self._perturbed, self._perturbed_backups, self.foreach)
        self._perturbed = []
        self._perturbed_backups = []
        self._stage = "idle"
        if not self._skip_pending:
            grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
            if nonfinite(grads, foreach=self.foreach):
                self._nonfinite("second")
        if self._skip_pending:
            self._skip_pending = False
            self.skipped_steps += 1
        else:
            self.base_optimizer.step()
            self.steps += 1
        self._opt_called = True  # tells LR schedulers attached to this object that a step happened
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """One full SAM step. ``closure`` must zero the grads, run forward and backward, and return the loss.

        Returns the loss of the first closure call (at the unperturbed weights).
        """
        if closure is None:
            raise RuntimeError(
                "SAM.step() needs a closure that zeroes the gradients, runs the forward and backward pass and "
                "returns the loss; or use first_step() / second_step()"
            )
        closure = torch.enable_grad()(closure)
        loss = closure()
        self.first_step(zero_grad=True)
        if self._skip_pending:
            self.second_step()
            return loss
        try:
            closure()
        except BaseException:
            self._restore_after_error()
            raise
        self.second_step()
        return loss

    def _restore_after_error(self) -> None:
        with torch.no_grad():
            _copy_(self._perturbed, self._perturbed_backups, self.foreach)
        self._perturbed = []
        self._stage = "idle"
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
