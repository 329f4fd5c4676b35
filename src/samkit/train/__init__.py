"""``samkit train``: train an image classifier with SGD, SAM, USAM, unified SAM, ASAM or GSAM, with metrics and
checkpoints.

One command, resumable and reproducible::

    samkit train --dataset fashion-mnist --model cnn --optimizer sam --rho 0.05 --epochs 1 --out runs/sam
    samkit train ... --out runs/sam --resume           # continue from the last finished epoch
    torchrun --nproc_per_node=2 -m samkit train --dataset synthetic --model mlp --epochs 2 --out runs/ddp

(``python -m samkit.train ...`` and ``torchrun ... -m samkit.train ...`` are the same command.) Each run writes to
``--out``:

* ``metrics.csv``: one row per epoch: learning rate, train loss and accuracy (averaged over the epoch's
  steps, at the unperturbed weights), test loss and accuracy, mean ‖g‖ and ‖ε‖ over the epoch, the top Hessian
  eigenvalue (every ``--sharpness-every`` epochs, by Lanczos on a fixed set of training batches), seconds
  (each epoch appends its row: an epoch's writes do not grow with the run's length);
* ``checkpoint.pt``: model, optimizer and RNG state after every epoch, and how much of ``metrics.csv`` it covers
  (written atomically, read back with ``torch.load(weights_only=True)``: a checkpoint that would run code is
  refused);
* ``summary.json``: ``status`` (``"running"``, ``"completed"`` or ``"diverged"``), the epoch and step where a
  run diverged, the final metrics and the config; once the run has ended, also its ``history`` (every row).

``--out`` must be a new or empty folder, or a run's folder (samkit marks it with a ``.samkit`` file): a folder
holding other files is refused, so a run never overwrites a file samkit did not write. Values that cannot fit
the machine are refused before any work: ``--momentum`` outside [0, 1), more than a million ``--epochs``, and
images, batches or synthetic data too large for its memory.

A non-finite loss or gradient ends the run as ``"diverged"`` (exit code 0: divergence is a result). ``--resume``
continues from the checkpoint; on CPU the final parameters are bit-identical to an uninterrupted run (the data
order and augmentation are seeded per epoch). Under ``torchrun`` the model is wrapped in
``DistributedDataParallel`` (gloo on CPU, NCCL on GPU), each rank reads its shard, and SAM perturbs with
each rank's own gradient (``--perturbation local``) or the averaged one (``global``).

``--optimizer`` is any optimizer of :mod:`samkit.optim.registry` (``sgd``, ``sam``, ``usam``, ``unified``, ``asam``,
``gsam``); a variant registered there is one too, with no change to this package.

The package: :mod:`~samkit.train.config` (:class:`TrainConfig`, validation, the learning-rate schedules),
:mod:`~samkit.train.loop` (the loop; one epoch is one function), :mod:`~samkit.train.records` (CSV, summary,
checkpoints), :mod:`~samkit.train.distributed` (the DDP context). The command line is in :mod:`samkit.cli`.

The same from Python (no files written when ``out`` is ``None``):

>>> from samkit.train import TrainConfig, train
>>> cfg = TrainConfig(dataset="synthetic", model="mlp", optimizer="sam", epochs=1, batch_size=32,
...                   synthetic_train=64, synthetic_test=32, image_size=8, progress=False, quiet=True)
>>> summary = train(cfg)
>>> summary["status"], len(summary["history"])
('completed', 1)
"""

from samkit.train.config import OPTIMIZERS, SCHEDULES, TrainConfig, TrainError
from samkit.train.loop import EpochStats, build_optimizer, train

__all__ = ["TrainConfig", "TrainError", "train", "build_optimizer", "EpochStats", "OPTIMIZERS", "SCHEDULES"]
