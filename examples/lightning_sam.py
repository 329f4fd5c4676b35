"""SAM inside PyTorch Lightning with gradient accumulation and bf16 autocast (``pip install 'samkit[lightning]'``).

The LightningModule is ordinary — ``training_step`` returns the mean loss of its batch and ``configure_optimizers``
returns a ``samkit.SAM`` — plus :class:`samkit.integrations.lightning.SAMMixin`, which makes each optimizer step a SAM
step over the whole accumulation window. The run is compared with the manual samkit loop
(``SAM.step_accumulated`` over the same micro-batches, from the same start):

    python examples/lightning_sam.py [--steps 20] [--accumulate 2] [--precision bf16-mixed]
"""

import argparse
import copy
import warnings

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import samkit
from samkit.integrations.lightning import SAMMixin

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=20)
parser.add_argument("--accumulate", type=int, default=2)
parser.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed"])
args = parser.parse_args()
warnings.filterwarnings("ignore")  # Lightning's hints about workers and loggers


class Regression(SAMMixin, pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x).float(), y)
        self.log("train_loss", loss)  # the loss at w: the mixin mutes self.log in the second pass
        return loss

    def configure_optimizers(self):
        return samkit.SAM(self.parameters(), torch.optim.SGD, rho=0.05, lr=0.05, momentum=0.9)


torch.manual_seed(0)
x, y = torch.randn(512, 10), torch.randn(512, 1)
loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=False)  # 32 micro-batches per epoch
model = Regression()
reference = copy.deepcopy(model)

trainer = pl.Trainer(
    max_steps=args.steps,
    accumulate_grad_batches=args.accumulate,
    precision=args.precision,
    accelerator="cpu",
    logger=False,
    enable_checkpointing=False,
    enable_progress_bar=False,
    enable_model_summary=False,
)
trainer.fit(model, loader)

# the manual samkit loop over the same micro-batches (epochs repeat the same order: shuffle=False)
opt = reference.configure_optimizers()
micro = list(loader)
windows = [micro[i : i + args.accumulate] for i in range(0, len(micro), args.accumulate)]
dtype = torch.bfloat16 if args.precision == "bf16-mixed" else None


def loss_fn(batch):
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype is not None):
        return nn.functional.mse_loss(reference.net(batch[0]).float(), batch[1])


for step in range(args.steps):
    opt.step_accumulated(loss_fn, windows[step % len(windows)])

with torch.no_grad():
    final = nn.functional.mse_loss(model.net(x), y).item()
diff = max((p - q).abs().max().item() for p, q in zip(model.parameters(), reference.parameters()))
print(f"lightning ({args.precision}, accumulate {args.accumulate}): steps {trainer.global_step}")
print(f"final loss {final:.6f}, last logged loss {trainer.callback_metrics['train_loss'].item():.6f}")
print(f"max |w_lightning - w_manual| = {diff:.3g}")
