"""Hessian-vector products: exact over a whole dataset for a model, and for plain functions of a flat tensor.

Two objectives share one interface (``n``, ``dtype``, ``device``, ``w0``, ``loss``, ``loss_and_grad``, ``hvp``):

* :class:`ModelObjective` -- the dataset loss ``L(w) = sum_b n_b L_b(w) / sum_b n_b`` of a model as a function of its
  flat trainable parameters ``w`` (``n_b`` = batch size, ``L_b`` = ``loss_fn(model(inputs_b), targets_b)``, a mean).
  The model is never modified: parameters are passed through :func:`torch.func.functional_call`, buffers are cloned
  in train mode, each submodule's ``training`` flag is restored, and ``.grad`` is never written.
* :class:`FunctionObjective` -- a scalar function ``f(x)`` of one flat tensor (the dynamics problems, matrix sensing).

Speed: Hessian-vector products use double backward (``grad`` of ``<grad L, v>``), not ``torch.func.jvp(grad(f))``
(forward-over-reverse). Measured on this project's shared 2-core CPU machine, torch 2.13 (noisy: other jobs were
running), results equal to 2e-7: MLP 784-256-256-10 on 512 samples, median 9.7 ms (double backward) vs 13.5 ms
(torch.func); ResNet-20 (eval-mode BatchNorm) on 32 images, 0.295 s vs 0.298 s, and on 128 images 6.8 s vs 15.6 s
(best of 3 under heavy load); a 1000-dimensional quadratic-plus-quartic function, 2.5 ms vs 37 ms. Double backward is
never slower, so it is the one used. Re-measure with ``python benchmarks/sharpness.py --hvp``.

>>> import torch
>>> hvp_fn(lambda x: (x ** 3).sum(), torch.tensor([1.0, 2.0]), torch.tensor([1.0, 1.0]))
tensor([ 6., 12.])
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from samkit._checks import batch_size
from samkit.sharpness._state import module_mode

__all__ = ["hvp", "hvp_fn", "ModelObjective", "FunctionObjective", "Objective"]

LossFn = Callable[[Any, Any], Tensor]


def _check_scalar(value: Any, what: str) -> Tensor:
    if not isinstance(value, Tensor):
        raise ValueError(f"{what} must return a scalar torch.Tensor, got {type(value).__name__}")
    if value.dim() != 0:
        raise ValueError(
            f"{what} must return a scalar (0-dimensional) loss, got shape {tuple(value.shape)}; "
            "reduce it with .mean() (the dataset loss is the batch-size-weighted mean of the batch means)"
        )
    return value


def hvp_fn(f: Callable[[Tensor], Tensor], x: Tensor, v: Tensor) -> Tensor:
    """Hessian of the scalar function ``f`` at ``x`` times ``v`` (double backward), same shape as ``x``.

    >>> import torch
    >>> A = torch.tensor([[2.0, 1.0], [1.0, 3.0]])
    >>> hvp_fn(lambda x: 0.5 * x @ A @ x, torch.zeros(2), torch.tensor([1.0, 0.0]))
    tensor([2., 1.])
    """
    if v.shape != x.shape:
        raise ValueError(f"v must have the shape of x {tuple(x.shape)}, got {tuple(v.shape)}")
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        y = _check_scalar(f(xg), "f")
        (g,) = torch.autograd.grad(y, xg, create_graph=True)
        if not g.requires_grad:  # f is affine in x: zero Hessian
            return torch.zeros_like(x)
        (hv,) = torch.autograd.grad(g, xg, grad_outputs=v.to(g.dtype), allow_unused=True)
    return torch.zeros_like(x) if hv is None else hv.detach()


class Objective:
    """Common interface: a scalar loss of a flat vector ``w`` (``n`` entries), evaluated around ``w0``."""

    n: int
    dtype: torch.dtype
    device: torch.device
    w0: Tensor
    n_hvp: int = 0

    def loss(self, w: Tensor | None = None) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def loss_and_grad(self, w: Tensor | None = None) -> tuple[Tensor, Tensor]:  # pragma: no cover - interface
        raise NotImplementedError

    def hvp(self, v: Tensor, w: Tensor | None = None) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def _vec(self, v: Tensor, name: str = "v") -> Tensor:
        if v.shape != (self.n,):
            raise ValueError(f"{name} must be a flat vector of {self.n} entries, got shape {tuple(v.shape)}")
        return v.to(device=self.device, dtype=self.dtype)


class FunctionObjective(Objective):
    """A scalar function ``f`` of one flat tensor, around the point ``x0`` (float tensor, any shape is flattened).

    >>> import torch
    >>> obj = FunctionObjective(lambda x: (x ** 2).sum(), torch.ones(3))
    >>> obj.hvp(torch.tensor([1.0, 0.0, 0.0]))
    tensor([2., 0., 0.])
    """

    def __init__(self, f: Callable[[Tensor], Tensor], x0: Tensor, *, dtype: torch.dtype | None = None) -> None:
        if not isinstance(x0, Tensor) or not x0.is_floating_point():
            raise ValueError("x must be a floating-point torch.Tensor")
        if x0.numel() == 0:
            raise ValueError("x must have at least one entry")
        self.f = f
        self.shape = x0.shape
        self.dtype = dtype or x0.dtype
        self.device = x0.device
        self.w0 = x0.detach().reshape(-1).to(self.dtype).clone()
        self.n = self.w0.numel()
        self.n_hvp = 0

    def _call(self, w: Tensor) -> Tensor:
        return _check_scalar(self.f(w.reshape(self.shape)), "f")

    def loss(self, w: Tensor | None = None) -> Tensor:
        w = self.w0 if w is None else self._vec(w, "w")
        with torch.no_grad():
            return self._call(w).detach()

    def loss_and_grad(self, w: Tensor | None = None) -> tuple[Tensor, Tensor]:
        w = self.w0 if w is None else self._vec(w, "w")
        with torch.enable_grad():
            wg = w.detach().requires_grad_(True)
            y = self._call(wg)
            (g,) = torch.autograd.grad(y, wg, allow_unused=True)
        return y.detach(), torch.zeros_like(w) if g is None else g.detach()

    def hvp(self, v: Tensor, w: Tensor | None = None) -> Tensor:
        w = self.w0 if w is None else self._vec(w, "w")
        self.n_hvp += 1
        return hvp_fn(self._call, w, self._vec(v))


def _convert(x: Any, device: torch.device, dtype: torch.dtype) -> Any:
    if isinstance(x, Tensor):
        return x.to(device=device, dtype=dtype) if x.is_floating_point() else x.to(device)
    if isinstance(x, (tuple, list)):
        return type(x)(_convert(e, device, dtype) for e in x)
    if isinstance(x, Mapping):
        return {k: _convert(v, device, dtype) for k, v in x.items()}
    return x


class ModelObjective(Objective):
    """The dataset loss of ``model`` as a function of its flat trainable parameters, exact over all ``batches``.

    ``batches`` is a re-iterable of ``(inputs, targets)`` pairs (a list, or a DataLoader without shuffling or random
    augmentation, since every product must see the same data); a one-shot iterator is materialized into a list.
    ``loss_fn(outputs, targets)`` returns the batch's mean loss; the dataset loss is the batch-size-weighted mean.

    Only parameters with ``requires_grad=True`` are variables (their order is ``model.named_parameters()``); frozen
    parameters and buffers are constants. The parameters are copied at construction (``w0``): later changes to the
    model are not seen. ``train_mode=False`` (default) evaluates every submodule in eval mode (BatchNorm uses its
    running statistics, dropout is off: a deterministic loss); ``train_mode=True`` uses batch statistics. Either way
    the model's modes, parameters, ``.grad`` and buffers are left exactly as they were (buffers are cloned before a
    train-mode forward). ``dtype=torch.float64`` runs everything on float64 copies of the parameters, buffers and
    floating-point inputs/targets (the model itself is not converted). ``reuse_graph``: keep each batch's first-order
    graph at ``w0`` and run every Hessian-vector product there as one backward pass through it (about 1.5-3× faster
    per product; memory: one graph per batch); ``None`` (default) does so when there is one batch.

    >>> import torch
    >>> model = torch.nn.Linear(2, 1)
    >>> data = [(torch.ones(4, 2), torch.zeros(4, 1))]
    >>> obj = ModelObjective(model, torch.nn.functional.mse_loss, data)
    >>> obj.n, obj.hvp(torch.tensor([0.0, 0.0, 1.0]))  # weights (2) then bias (1); H = 2 [x; 1][x; 1]^T
    (3, tensor([2., 2., 2.]))
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        batches: Iterable[tuple[Any, Any]],
        *,
        train_mode: bool = False,
        dtype: torch.dtype | None = None,
        reuse_graph: bool | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        named = [(k, p) for k, p in model.named_parameters() if p.requires_grad]
        if not named:
            raise ValueError("model has no parameters with requires_grad=True: there is no Hessian to measure")
        if dtype is not None and not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating-point dtype (e.g. torch.float64), got {dtype}")
        self.model = model
        self.loss_fn = loss_fn
        self.train_mode = bool(train_mode)
        first = named[0][1]
        self.dtype = dtype or first.dtype
        self.device = first.device
        self.names = [k for k, _ in named]
        self.shapes = [p.shape for _, p in named]
        self.numels = [p.numel() for _, p in named]
        with torch.no_grad():
            self.w0 = torch.cat([p.detach().reshape(-1).to(self.device, self.dtype) for _, p in named]).clone()
            variable = set(self.names)
            frozen = {k: p.detach() for k, p in model.named_parameters() if k not in variable}
            consts = {**frozen, **dict(model.named_buffers())}
            self._consts = {
                k: (t.detach().to(self.device, self.dtype) if t.is_floating_point() else t.detach())
                for k, t in consts.items()
            }
        self.n = self.w0.numel()
        self.n_hvp = 0
        self.n_grad = 0
        self.n_loss = 0
        if iter(batches) is batches:  # a one-shot iterator (generator): keep its items for the repeated passes
            batches = list(batches)
        if hasattr(batches, "__len__") and len(batches) == 0:  # type: ignore[arg-type]
            raise ValueError("batches is empty: pass at least one (inputs, targets) pair")
        self.batches = batches
        if reuse_graph is not None and not isinstance(reuse_graph, bool):
            raise ValueError(f"reuse_graph must be True, False or None (automatic), got {reuse_graph!r}")
        if reuse_graph is None:  # one batch: its graph costs no more memory than the product itself needs
            reuse_graph = hasattr(batches, "__len__") and len(batches) == 1  # type: ignore[arg-type]
        self.reuse_graph = reuse_graph
        #: per batch at w0: (the flat parameters, the gradient with its graph, the batch size); built on first use
        self._graphs: list[tuple[Tensor, Tensor | None, int]] | None = None
        self._loss0: Tensor | None = None

    # -- one pass over the data -------------------------------------------------------------------------------
    def _iter(self) -> Iterable[tuple[Any, Any, int]]:
        count = 0
        for batch in self.batches:
            if not isinstance(batch, (tuple, list)) or len(batch) != 2:
                raise ValueError(f"each batch must be an (inputs, targets) pair, got {type(batch).__name__}")
            inputs, targets = batch
            nb = batch_size(inputs)
            if nb == 0:
                continue
            count += nb
            yield _convert(inputs, self.device, self.dtype), _convert(targets, self.device, self.dtype), nb
        if count == 0:
            raise ValueError("batches is empty (no samples): pass at least one non-empty (inputs, targets) pair")

    def _batch_loss(self, w: Tensor, inputs: Any, targets: Any) -> Tensor:
        params = dict(zip(self.names, (t.view(s) for t, s in zip(torch.split(w, self.numels), self.shapes))))
        consts = self._consts
        if self.train_mode:  # train-mode forwards may write running statistics: give them copies
            consts = {k: t.clone() for k, t in consts.items()}
        args = tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)
        out = functional_call(self.model, {**params, **consts}, args)
        return _check_scalar(self.loss_fn(out, targets), "loss_fn")

    def loss(self, w: Tensor | None = None) -> Tensor:
        """Dataset loss at ``w`` (default ``w0``)."""
        w = self.w0 if w is None else self._vec(w, "w")
        total, count = torch.zeros((), dtype=torch.float64, device=self.device), 0
        self.n_loss += 1
        with torch.no_grad(), module_mode(self.model, self.train_mode):
            for inputs, targets, nb in self._iter():
                total += nb * self._batch_loss(w, inputs, targets).double()
                count += nb
        return (total / count).to(self.dtype)

    def loss_and_grad(self, w: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Dataset loss and its gradient (flat) at ``w`` (default ``w0``; read off the kept graphs when there are)."""
        if w is None and self._graphs is not None:
            self.n_grad += 1
            return self._grad_from_graphs()
        w = self.w0 if w is None else self._vec(w, "w")
        total, count = torch.zeros((), dtype=torch.float64, device=self.device), 0
        grad = torch.zeros_like(w)
        self.n_grad += 1
        with torch.enable_grad(), module_mode(self.model, self.train_mode):
            for inputs, targets, nb in self._iter():
                wg = w.detach().requires_grad_(True)
                loss = self._batch_loss(wg, inputs, targets)
                (g,) = torch.autograd.grad(loss, wg, allow_unused=True)
                if g is not None:
                    grad.add_(g, alpha=nb)
                total += nb * loss.detach().double()
                count += nb
        return (total / count).to(self.dtype), grad.div_(count)

    def hvp(self, v: Tensor, w: Tensor | None = None) -> Tensor:
        """Exact Hessian-vector product of the dataset loss at ``w`` (default ``w0``), accumulated over batches.

        At ``w0`` with ``reuse_graph``, the first product keeps each batch's first-order graph (the gradient built
        with ``create_graph=True``) and every product after it is one backward pass through those graphs (what
        PyHessian does for one batch): no forward pass, no first backward. The results are the same.
        """
        v = self._vec(v)
        if w is None and self.reuse_graph:
            self.n_hvp += 1
            return self._hvp_from_graphs(v)
        w = self.w0 if w is None else self._vec(w, "w")
        out = torch.zeros_like(w)
        count = 0
        self.n_hvp += 1
        with torch.enable_grad(), module_mode(self.model, self.train_mode):
            for inputs, targets, nb in self._iter():
                wg = w.detach().requires_grad_(True)
                loss = self._batch_loss(wg, inputs, targets)
                (g,) = torch.autograd.grad(loss, wg, create_graph=True, allow_unused=True)
                count += nb
                if g is None or not g.requires_grad:
                    continue
                (hv,) = torch.autograd.grad(g, wg, grad_outputs=v, allow_unused=True)
                if hv is not None:
                    out.add_(hv, alpha=nb)
        return out.div_(count)

    # -- kept first-order graphs at w0 (reuse_graph) ----------------------------------------------------------
    def _build_graphs(self) -> list[tuple[Tensor, Tensor | None, int]]:
        if self._graphs is None:
            graphs: list[tuple[Tensor, Tensor | None, int]] = []
            total, count = torch.zeros((), dtype=torch.float64, device=self.device), 0
            with torch.enable_grad(), module_mode(self.model, self.train_mode):
                for inputs, targets, nb in self._iter():
                    wg = self.w0.detach().requires_grad_(True)
                    loss = self._batch_loss(wg, inputs, targets)
                    (g,) = torch.autograd.grad(loss, wg, create_graph=True, allow_unused=True)
                    graphs.append((wg, g, nb))
                    total += nb * loss.detach().double()
                    count += nb
            self._graphs, self._loss0 = graphs, (total / count).to(self.dtype)
        return self._graphs

    def _hvp_from_graphs(self, v: Tensor) -> Tensor:
        out, count = torch.zeros_like(self.w0), 0
        with torch.enable_grad():
            for wg, g, nb in self._build_graphs():
                count += nb
                if g is None or not g.requires_grad:
                    continue
                (hv,) = torch.autograd.grad(g, wg, grad_outputs=v, retain_graph=True, allow_unused=True)
                if hv is not None:
                    out.add_(hv, alpha=nb)
        return out.div_(count)

    def _grad_from_graphs(self) -> tuple[Tensor, Tensor]:
        graphs = self._build_graphs()
        grad, count = torch.zeros_like(self.w0), 0
        for _, g, nb in graphs:
            if g is not None:
                grad.add_(g.detach(), alpha=nb)
            count += nb
        assert self._loss0 is not None
        return self._loss0, grad.div_(count)


def hvp(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Iterable[tuple[Any, Any]],
    v: Tensor | Sequence[Tensor],
    *,
    train_mode: bool = False,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """Hessian of the dataset loss times ``v`` (a flat vector, or one tensor per trainable parameter); flat result.

    See :class:`ModelObjective` for the data convention, modes and dtype. For many products at the same point build
    one :class:`ModelObjective` and call its ``hvp`` method.

    >>> import torch
    >>> model = torch.nn.Linear(1, 1, bias=False)
    >>> hvp(model, torch.nn.functional.mse_loss, [(torch.full((2, 1), 3.0), torch.zeros(2, 1))], torch.ones(1))
    tensor([18.])
    """
    obj = ModelObjective(model, loss_fn, batches, train_mode=train_mode, dtype=dtype)
    if not isinstance(v, Tensor):
        v = torch.cat([t.reshape(-1) for t in v])
    return obj.hvp(v)
