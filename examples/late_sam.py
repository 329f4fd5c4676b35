"""Late SAM (Zhou et al., ICLR 2025): the base optimizer for most of training, SAM only at the end.

``SAM(..., start=N)`` takes the base step alone (one forward and backward) for the first N calls of ``step`` and
the SAM step (two) after, so late SAM costs N + 2(T − N) gradient evaluations instead of SAM's 2T. Until the
switch it *is* the base optimizer, bit for bit; the count of calls is in ``state_dict()``, so a resumed run switches
at the same step. ``samkit train --sam-start 0.5`` (a fraction of the steps, or a number of steps) does the same.

    python examples/late_sam.py [--steps 60] [--start 0.75]
"""

import argparse
import copy

import torch
from torch import nn

import samkit
from samkit.optim.schedule import resolve_start

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=60)
parser.add_argument("--start", type=float, default=0.75, help="the fraction of the steps before SAM starts")
args = parser.parse_args()

torch.manual_seed(0)
x = torch.randn(256, 10)
y = torch.sin(x @ torch.randn(10, 1)) + 0.1 * torch.randn(256, 1)
init = nn.Sequential(nn.Linear(10, 32), nn.Tanh(), nn.Linear(32, 1))
start = resolve_start(args.start, args.steps)  # 0.75 of 60 steps: 45


def run(kind):
    model = copy.deepcopy(init)
    if kind == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    else:
        late = start if kind == "late sam" else 0
        opt = samkit.SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9, start=late)
    evaluations, snapshots = [0], {}

    def closure():
        evaluations[0] += 1
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss

    first = float(closure().detach())
    for t in range(args.steps):
        if t == start:
            snapshots["switch"] = [p.detach().clone() for p in model.parameters()]
        opt.step(closure)
    with torch.no_grad():
        final = float(nn.functional.mse_loss(model(x), y))
    return first, final, evaluations[0] - 1, snapshots["switch"]


results = {kind: run(kind) for kind in ("sgd", "sam", "late sam")}
gap = max(float((a - b).abs().max()) for a, b in zip(results["late sam"][3], results["sgd"][3]))
for kind, (first, final, evaluations, _) in results.items():
    print(f"{kind}: loss {first:.4f} -> {final:.4f}, {evaluations} gradient evaluations in {args.steps} steps")
print(f"late sam starts at step {start}; max |w_late - w_sgd| at the switch: {gap:g}")
