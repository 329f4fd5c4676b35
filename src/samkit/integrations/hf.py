"""samkit inside the Hugging Face ``transformers.Trainer``: ``SAMTrainer`` takes SAM steps.

``SAMTrainer`` is a ``Trainer`` whose optimizer is a :class:`samkit.SAM`: the optimizer the Trainer would build
(``args.optim``, learning rate, weight-decay groups) wrapped with ``sam_kwargs`` (``rho``, ``normalization``, ...), or
a SAM passed as ``optimizers=(sam, scheduler)``. ``gradient_accumulation_steps``, ``max_grad_norm``, LR schedules and
``bf16=True`` work as with any optimizer.

How a step runs. The Trainer calls ``training_step`` once per micro-batch (forward and backward; the loss divided by
the number of micro-batches of the window, or normalised by ``num_items_in_batch``) and ``optimizer.step()`` once per
window, after clipping the gradients. ``SAMTrainer.training_step`` keeps the window's micro-batches; on the last one
(``accelerator.sync_gradients``), once the first-pass gradient of the whole window is accumulated, it perturbs the
weights (:meth:`SAM.first_step <samkit.SAM.first_step>`) and re-runs the Trainer's own ``training_step`` on every
micro-batch of the window at ``w + ε`` (the second pass, with the same scaling and autocast). The Trainer then clips
that descent gradient and calls ``optimizer.step()``: its optimizer is a :class:`SAMStepper`, whose ``step`` is
:meth:`SAM.second_step <samkit.SAM.second_step>` (restore the weights, base step). One step therefore equals
:meth:`SAM.step_accumulated <samkit.SAM.step_accumulated>` over the window (``tests/integrations/test_hf.py``).

Not supported: ``fp16=True`` (a GradScaler would skip ``optimizer.step()`` on overflow and leave the weights at
``w + ε``; use ``bf16=True``), interval SAM (``interval > 1``), DeepSpeed / FSDP (untested).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch.optim import Optimizer

from samkit.optim.sam import SAM

__all__ = ["INSTALL_HINT", "SAMStepper", "SAMTrainer", "require_transformers"]

#: how to install the extra this module needs
INSTALL_HINT = "pip install 'samkit[hf]'"

if TYPE_CHECKING:
    SAMTrainer: type  # built on first use by the module's __getattr__


def require_transformers() -> Any:
    """The ``transformers`` module; an :class:`ImportError` naming the extra when it (or accelerate) is missing."""
    try:
        import accelerate  # noqa: F401  (the Trainer needs it; import it here for a clear message)
        import transformers
    except ImportError as err:
        raise ImportError(
            f"samkit.integrations.hf needs transformers and accelerate, which are not installed: {INSTALL_HINT}"
        ) from err
    return transformers


class SAMStepper(Optimizer):
    """The optimizer a ``Trainer`` steps when the SAM step is split around its clipping: ``step()`` is
    :meth:`SAM.second_step <samkit.SAM.second_step>` (the weights must be at ``w + ε``, after ``first_step``).

    It shares ``param_groups`` (so LR schedulers act on the base optimizer) and its state dict is the SAM's.

    >>> import torch, samkit
    >>> from samkit.integrations.hf import SAMStepper
    >>> m = torch.nn.Linear(2, 1)
    >>> sam = samkit.SAM(m.parameters(), torch.optim.SGD, rho=0.05, lr=0.1)
    >>> stepper = SAMStepper(sam)
    >>> m(torch.ones(1, 2)).sum().backward(); sam.first_step(zero_grad=True)
    >>> m(torch.ones(1, 2)).sum().backward(); stepper.step(); sam.steps
    1
    """

    def __init__(self, sam: SAM) -> None:
        if not isinstance(sam, SAM):
            raise TypeError(f"SAMStepper wraps a samkit.SAM, got {type(sam).__name__}")
        super().__init__(sam.param_groups, sam.defaults)
        self.sam = sam
        self.param_groups = sam.param_groups
        self.state = sam.base_optimizer.state

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> None:  # type: ignore[override]
        if closure is not None:
            raise ValueError("SAMStepper.step() takes no closure: the passes are run by SAMTrainer.training_step")
        if not self.sam.is_perturbed:
            raise RuntimeError(
                "SAMStepper.step() called without SAM's first step: the optimizer of a SAMTrainer must be stepped by "
                "the Trainer, after training_step ran the last micro-batch of the accumulation window"
            )
        self.sam.second_step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.sam.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        return self.sam.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.sam.load_state_dict(state_dict)


def __getattr__(name: str) -> Any:
    """``SAMTrainer`` is built on first use, so this module imports without transformers."""
    if name == "SAMTrainer":
        cls = globals()["SAMTrainer"] = _build_trainer_class()
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _build_trainer_class() -> type:
    transformers = require_transformers()

    class SAMTrainer(transformers.Trainer):  # type: ignore[misc, name-defined]
        """A ``transformers.Trainer`` that takes :class:`samkit.SAM` steps (see :mod:`samkit.integrations.hf`).

        Args:
            *args, **kwargs: as for ``Trainer``. ``optimizers=(sam, scheduler)`` may pass a built
                :class:`samkit.SAM`; otherwise the optimizer the Trainer builds from ``args`` is wrapped.
            sam_kwargs: keyword arguments of :class:`samkit.SAM` for that wrapping (``rho``, ``normalization``,
                ``adaptive``, ...). Default ``{"rho": 0.05}``.

        Example (needs ``pip install 'samkit[hf]'``; ``examples/hf_trainer_sam.py`` runs it):

        >>> from samkit.integrations.hf import SAMTrainer  # doctest: +SKIP
        >>> args = TrainingArguments("out", gradient_accumulation_steps=2, bf16=True, max_steps=10)  # doctest: +SKIP
        >>> SAMTrainer(model, args, train_dataset=data, sam_kwargs={"rho": 0.05}).train()  # doctest: +SKIP
        """

        def __init__(self, *args: Any, sam_kwargs: dict[str, Any] | None = None, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            if self.args.fp16:
                raise ValueError(
                    "SAMTrainer does not support fp16=True: the GradScaler would skip optimizer.step() on an "
                    "overflow and leave the weights perturbed. Use bf16=True."
                )
            self.sam_kwargs = {"rho": 0.05} if sam_kwargs is None else dict(sam_kwargs)
            self.sam: SAM | None = None
            self._sam_window: list[tuple[Any, Any]] = []

        def create_optimizer(self, model: Any = None) -> Optimizer:
            opt: Any = vars(self).get("optimizer")
            if isinstance(opt, SAMStepper):  # a second train() call
                return opt
            if not isinstance(opt, SAM):
                opt = super().create_optimizer(model)
                opt = opt if isinstance(opt, SAM) else SAM(None, opt, **self.sam_kwargs)
            if opt.interval != 1:
                raise ValueError("SAMTrainer does not support interval SAM (interval > 1)")
            self.sam, self._sam_window = opt, []
            self.optimizer = SAMStepper(opt)
            return self.optimizer

        def training_step(self, model: Any, inputs: Any, num_items_in_batch: Any = None) -> torch.Tensor:
            """The first pass of this micro-batch; on the window's last one, ``first_step`` and the second pass."""
            loss = super().training_step(model, inputs, num_items_in_batch)
            sam = self.sam
            if sam is None:
                return loss  # type: ignore[no-any-return]
            self._sam_window.append((inputs, num_items_in_batch))
            if self.accelerator.sync_gradients:  # the window's gradient is accumulated: the SAM step
                window, self._sam_window = self._sam_window, []
                sam.first_step(zero_grad=True)
                if not sam.skipping:
                    sam.second_pass(lambda: self._sam_rerun(model, window))
            return loss  # type: ignore[no-any-return]

        def _sam_rerun(self, model: Any, window: list[tuple[Any, Any]]) -> None:
            for inputs, num_items in window:  # the Trainer's own forward and backward, at w + ε
                super().training_step(model, inputs, num_items)

    SAMTrainer.__module__ = __name__
    return SAMTrainer
