"""SAM with a ``torch.compile``d model: compile the model, keep the optimizer step eager.

The step reads the gradient norm on the host once per pass (to refuse non-finite gradients), so it is not meant to
be compiled; the forward and backward passes, where the time goes, are. ``--backend inductor`` generates code (slow
to start on CPU); ``aot_eager`` only traces. The compiled run is compared with the same run on the eager model.

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


def run(compiled: bool) -> tuple[float, float, torch.Tensor]:
    """First and last loss of ``args.steps`` SAM steps, and the final weights."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(10, 64), nn.ReLU(), nn.Linear(64, 1))
    forward = torch.compile(model, backend=args.backend) if compiled else model
    opt = samkit.SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.05, momentum=0.9)

    def closure():
        opt.zero_grad()
        loss = nn.functional.mse_loss(forward(x), y)
        loss.backward()
        return loss

    losses = [opt.step(closure).item() for _ in range(args.steps)]
    return losses[0], losses[-1], torch.cat([p.detach().flatten() for p in model.parameters()])


first, last, w = run(compiled=True)
_, eager_last, w_eager = run(compiled=False)
print(
    f"compiled ({args.backend}): loss {first:.4f} -> {last:.4f} after {args.steps} SAM steps "
    f"(eager: {eager_last:.4f}; max |w - w_eager| = {(w - w_eager).abs().max().item():.2e})"
)
