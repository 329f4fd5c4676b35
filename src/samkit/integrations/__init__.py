"""Thin adapters that run :class:`samkit.SAM` inside training frameworks (optional extras, imported lazily).

* :mod:`samkit.integrations.lightning`: :class:`~samkit.integrations.lightning.SAMMixin` for a PyTorch Lightning
  ``LightningModule`` (automatic optimization, ``accumulate_grad_batches``, ``bf16-mixed`` / ``16-mixed``);
  ``pip install 'samkit[lightning]'``.
* :mod:`samkit.integrations.hf`: ``SAMTrainer``, a Hugging Face ``transformers.Trainer`` that takes SAM steps
  (``gradient_accumulation_steps``, ``bf16=True``); ``pip install 'samkit[hf]'``.

Importing ``samkit`` or these modules never imports Lightning or transformers: the framework is imported when the
adapter is first used, and a missing one is an :class:`ImportError` that names the extra to install.
"""

from __future__ import annotations

__all__: list[str] = []
