"""SAM with a ``torch.compile``d model: compile the model, keep the optimizer step eager.

The step reads the gradient norm on the host once per pass (to refuse non-finite gradients), so it is not meant to
be compiled; the forward and backward passes, where the time goes, are. ``--backend inductor`` generates code (slow
to start on CPU); ``aot_eager`` only traces.

    python examples/compile.py [--backend aot_eager]
"""

import argparse

import torch
from torch import nn

import samkit

parser = argparse.ArgumentParser()
parser.add_argument("--backend", default="aot_eager")
parser.add_argument("--steps", type=int, default=20)
args = parser.parse_args()

torch.manual_seed(0)
x, y = torch.randn(128, 10), torch.randn(128, 1)
model = nn.Sequential(nn.Linear(10, 64), nn.ReLU(), nn.Linear(64, 1))
compiled = torch.compile(model, backend=args.backend)
opt = samkit.SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.05, momentum=0.9)


def closure():
    opt.zero_grad()
    loss = nn.functional.mse_loss(compiled(x), y)
    loss.backward()
    return loss


for _ in range(args.steps):
    loss = opt.step(closure)
print(f"compiled ({args.backend}): loss {loss.item():.4f} after {args.steps} SAM steps")
