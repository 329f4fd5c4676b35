"""samkit inside PyTorch Lightning: :class:`SAMMixin` makes Lightning's automatic optimization take SAM steps.

``configure_optimizers`` returns a :class:`samkit.SAM` and nothing else changes in the user's ``LightningModule``:
``training_step`` returns the mean loss of its batch, and ``Trainer(accumulate_grad_batches=k,
precision="bf16-mixed" | "16-mixed", gradient_clip_val=...)`` work as with any optimizer.

Why a mixin: Lightning's default ``optimizer_step`` calls ``optimizer.step(closure)``, and its closure runs
``training_step`` and ``backward`` on the *current* batch only. That is right for SAM with one batch per step
(``SAM.step(closure)`` calls it twice), but

* with ``accumulate_grad_batches=k`` the closure of the last micro-batch recomputes only that micro-batch, so the
  second pass (at ``w + ε``) would see 1 of the k micro-batches, weighted 1/k: a wrong descent gradient;
* with a ``GradScaler`` (``16-mixed``) the precision plugin calls the closure itself and then
  ``scaler.step(optimizer)``, which calls ``SAM.step()`` without a closure: an error;
* the logged loss would be the one at ``w + ε`` and gradient clipping would clip the first-pass gradient too.

:class:`SAMMixin` overrides the public ``optimizer_step`` hook: the first pass is Lightning's own closure (its loop has
already accumulated the earlier micro-batches of the window), the second pass re-runs ``training_step`` and
``backward`` through the strategy on every micro-batch of the window (kept by ``on_train_batch_start``), with the same
``1/k`` scaling, the same autocast and the same loss scaler; gradient clipping applies to the second-pass gradient.
The step is :meth:`SAM.step(closure, scaler=...) <samkit.SAM.step>`, so one step equals
:meth:`SAM.step_accumulated <samkit.SAM.step_accumulated>` over the window's micro-batches
(``tests/integrations/test_lightning.py`` checks it).
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any, cast

from torch import Tensor

from samkit.optim.sam import SAM

__all__ = ["INSTALL_HINT", "SAMMixin", "require_lightning"]

#: how to install the extra this module needs
INSTALL_HINT = "pip install 'samkit[lightning]'"


def require_lightning() -> Any:
    """The ``lightning.pytorch`` module (or the older ``pytorch_lightning``); an :class:`ImportError` naming the extra
    when neither is installed."""
    for name in ("lightning.pytorch", "pytorch_lightning"):
        try:
            return importlib.import_module(name)
        except ImportError:
            pass
    raise ImportError(f"samkit.integrations.lightning needs PyTorch Lightning, which is not installed: {INSTALL_HINT}")


def _no_log(*args: Any, **kwargs: Any) -> None:
    """``self.log`` during the second pass: the logged values are those of the first pass (at ``w``)."""


class SAMMixin:
    """Mix into a ``LightningModule`` (before it) so that automatic optimization takes correct SAM steps.

    Use it as ``class Model(SAMMixin, lightning.pytorch.LightningModule)`` and return a :class:`samkit.SAM` from
    ``configure_optimizers`` (with or without an LR scheduler). With another optimizer the mixin steps as Lightning
    does. If the module overrides ``on_train_batch_start`` or ``optimizer_step``, it must call ``super()``.

    During the second pass (the re-run of ``training_step`` at ``w + ε``) :attr:`sam_second_pass` is True and
    ``self.log`` / ``self.log_dict`` do nothing, so the logged loss is the one at ``w``. Anything else
    ``training_step`` updates (a torchmetrics metric, a counter) runs twice per micro-batch unless guarded by
    ``if not self.sam_second_pass``.

    Example (needs ``pip install 'samkit[lightning]'``; ``examples/lightning_sam.py`` runs it):

    >>> import lightning.pytorch as pl, torch, samkit  # doctest: +SKIP
    >>> from samkit.integrations.lightning import SAMMixin
    >>> class Model(SAMMixin, pl.LightningModule):  # doctest: +SKIP
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.net = torch.nn.Linear(4, 1)
    ...     def training_step(self, batch, batch_idx):
    ...         x, y = batch
    ...         return torch.nn.functional.mse_loss(self.net(x), y)
    ...     def configure_optimizers(self):
    ...         return samkit.SAM(self.parameters(), torch.optim.SGD, rho=0.05, lr=0.1)
    >>> pl.Trainer(max_steps=4, accumulate_grad_batches=2, precision="bf16-mixed").fit(Model(), loader)  # doctest: +SKIP
    """

    #: True while ``training_step`` is re-run at ``w + ε`` (the second pass)
    sam_second_pass: bool = False

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> Any:
        """Keep the micro-batches of the accumulation window (the batches since Lightning last zeroed the grads)."""
        window = self.__dict__.get("_sam_window")
        if window is None or batch_idx % self._trainer_().accumulate_grad_batches == 0:
            window = self.__dict__["_sam_window"] = []
        window.append((batch, batch_idx))
        return cast(Any, super()).on_train_batch_start(batch, batch_idx)

    def optimizer_step(
        self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Callable[[], Any] | None = None
    ) -> None:
        """One SAM step over the window: Lightning's closure is the first pass, the window's re-run the second."""
        sam = getattr(optimizer, "optimizer", optimizer)  # a LightningOptimizer wraps the optimizer
        if not isinstance(sam, SAM) or optimizer_closure is None:
            cast(Any, super()).optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
            return
        trainer = self._trainer_()
        window = self.__dict__.pop("_sam_window", None) or []
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        if scaler is not None and trainer.gradient_clip_val:
            raise NotImplementedError(
                "SAMMixin: gradient_clip_val with a GradScaler (precision='16-mixed') is not supported: the scaler "
                "unscales inside SAM's step. Use precision='bf16-mixed' or clip without a scaler."
            )
        first = True

        def closure() -> Any:
            nonlocal first
            if first:  # the first pass: training_step and backward of the last micro-batch, by Lightning
                first = False
                return optimizer_closure()
            self._sam_rerun(sam, window)  # the second pass, at w + ε
            if scaler is None:
                self.configure_gradient_clipping(  # type: ignore[attr-defined]
                    sam, trainer.gradient_clip_val, trainer.gradient_clip_algorithm
                )
            return None

        sam.step(closure, scaler=scaler)
        if scaler is not None:
            scaler.update()

    def _sam_rerun(self, sam: SAM, window: list[tuple[Any, int]]) -> None:
        """``training_step`` and ``backward`` of every micro-batch of the window, scaled as Lightning scales them."""
        trainer = self._trainer_()
        strategy = trainer.strategy
        with self._sam_second_pass_context():
            for batch, batch_idx in window:
                loss = _loss_of(strategy.training_step(batch, batch_idx))
                if loss is not None:
                    strategy.backward(loss / trainer.accumulate_grad_batches, sam)

    @contextlib.contextmanager
    def _sam_second_pass_context(self) -> Iterator[None]:
        self.sam_second_pass = True
        self.log = self.log_dict = _no_log  # instance attributes hide the methods until deleted
        try:
            yield
        finally:
            del self.log, self.log_dict, self.sam_second_pass

    def _trainer_(self) -> Any:
        return cast(Any, self).trainer


def _loss_of(output: Any) -> Tensor | None:
    """The loss in a ``training_step`` output (a tensor, a mapping with ``"loss"``, or None to skip)."""
    if output is None or isinstance(output, Tensor):
        return output
    if isinstance(output, Mapping) and "loss" in output:
        return cast(Tensor, output["loss"])
    raise TypeError(f"training_step must return a Tensor, a dict with 'loss', or None; got {type(output).__name__}")
