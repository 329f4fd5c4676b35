"""SAM on a BatchNorm network with mixed precision.

- ``model=model`` keeps the BatchNorm running statistics of the first pass (the second forward does not move them):
  each BatchNorm layer counts one update per step, not two.
- bfloat16 autocast needs no scaler; fp16 uses a GradScaler: pass it to ``step`` and call ``scaler.update()`` after.
  samkit unscales the first-pass gradient itself before computing ε (essential for USAM) and skips the step when
  either pass overflows.

    python examples/bn_amp.py [--steps 20]
"""

import argparse

import torch
from torch import nn

import samkit
from samkit.models import ResNet20

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=20)
parser.add_argument("--batch", type=int, default=64)
args = parser.parse_args()

device = "cuda" if torch.cuda.is_available() else "cpu"
torch.manual_seed(0)
x = torch.randn(args.batch, 3, 32, 32, device=device)
y = torch.randint(0, 10, (args.batch,), device=device)
loss_fn = nn.CrossEntropyLoss()

for precision in ("bf16", "fp16"):
    model = ResNet20().to(device)
    opt = samkit.USAM(model.parameters(), torch.optim.SGD, rho=0.01, lr=0.05, momentum=0.9, model=model)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    scaler = torch.amp.GradScaler(device, enabled=precision == "fp16")

    def closure():
        opt.zero_grad()
        with torch.autocast(device, dtype=dtype):
            loss = loss_fn(model(x), y)
        scaler.scale(loss).backward()  # a disabled scaler passes the loss through
        return loss

    losses = []
    for _ in range(args.steps):
        losses.append(opt.step(closure, scaler=scaler).item())
        scaler.update()
    updates = int(model.stem[1].num_batches_tracked) / args.steps
    print(
        f"{precision}: loss {losses[0]:.3f} -> {losses[-1]:.3f} after {opt.steps} steps "
        f"({opt.skipped_steps} skipped on overflow); BatchNorm updates per step: {updates:g}"
    )
