"""Gradient accumulation with SAM, in its two modes.

- ``mode="full"``: ε from the gradient accumulated over all micro-batches (two accumulation sweeps) — the same step
  as SAM on the whole batch, with the memory of one micro-batch.
- ``mode="m-sharpness"``: each micro-batch of m examples gets its own ε; the descent gradients are averaged
  (m-sharpness on one device, Foret et al. 2021): a different algorithm.

Each mode is compared with plain SAM on the whole batch of 256, from the same start:

    python examples/accumulation.py
"""

import argparse

import torch
from torch import nn

import samkit

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=50)
args = parser.parse_args()
torch.manual_seed(0)
x, y = torch.randn(256, 10), torch.randn(256, 1)
micro_batches = list(zip(x.split(32), y.split(32)))  # 8 micro-batches of 32


def make() -> tuple[nn.Module, samkit.SAM]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 64), nn.ReLU(), nn.Linear(64, 1))
    return model, samkit.SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.05, momentum=0.9)


whole, whole_opt = make()
for _ in range(args.steps):  # the reference: SAM on the whole batch at once

    def closure():
        whole_opt.zero_grad()
        loss = nn.functional.mse_loss(whole(x), y)
        loss.backward()
        return loss

    whole_opt.step(closure)
reference = torch.cat([p.detach().flatten() for p in whole.parameters()])

for mode in ("full", "m-sharpness"):
    model, opt = make()
    first = None
    for _ in range(args.steps):
        loss = opt.step_accumulated(lambda b: nn.functional.mse_loss(model(b[0]), b[1]), micro_batches, mode=mode)
        first = loss.item() if first is None else first
    diff = (torch.cat([p.detach().flatten() for p in model.parameters()]) - reference).abs().max().item()
    print(
        f"{mode:12s}: loss {first:.4f} -> {loss.item():.4f} after {args.steps} steps of 8 micro-batches; "
        f"max |w - w(SAM on the whole batch)| = {diff:.2e}"
    )
