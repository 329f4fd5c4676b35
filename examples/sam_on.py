"""SAM-ON (Mueller et al., NeurIPS 2023): perturb only the normalization layers' weights and biases.

``samkit.sam_on_param_groups(model)`` puts the affine parameters of every normalization layer in a group that SAM
perturbs and everything else in a ``perturb=False`` group: ε = ρ g_S/‖g_S‖ on that subset S, with the norm over S
alone, and 0 elsewhere; every parameter still takes the base step with its gradient at the perturbed point. That is
not per-group ρ = 0 on the rest, which keeps the rest in the norm and so shrinks ε_S to ρ‖g_S‖/‖g‖ (printed below).
``samkit train --sam-on norm`` does the same for a model with normalization layers (``--model resnet20``).

    python examples/sam_on.py [--steps 30]
"""

import argparse
import copy

import torch
from torch import nn

import samkit

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=30)
args = parser.parse_args()

torch.manual_seed(0)
x = torch.randn(128, 8)
y = (x[:, :4].sum(1) > 0).long() + 2 * (x[:, 4:].sum(1) > 0).long()  # 4 classes
init = nn.Sequential(
    nn.Linear(8, 64), nn.LayerNorm(64), nn.ReLU(), nn.Linear(64, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, 4)
)


def norm_ids(model):
    return {id(p) for m in model.modules() if isinstance(m, (nn.LayerNorm, nn.BatchNorm1d)) for p in m.parameters()}


def run(kind):
    model = copy.deepcopy(init)
    subset = norm_ids(model)
    groups = samkit.sam_on_param_groups(model)
    if kind == "sam":
        groups = model.parameters()
    elif kind == "rho=0 on the rest":
        del groups[1]["perturb"]
        groups[1]["rho"] = 0.0
    opt = samkit.SAM(groups, torch.optim.SGD, rho=0.05, lr=0.05, momentum=0.9, model=model)

    def closure():
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss

    losses = [float(opt.step(closure).detach()) for _ in range(args.steps)]
    # one more first step, to measure ε on the subset and elsewhere
    closure()
    before = [p.detach().clone() for p in model.parameters()]
    opt.first_step()
    eps = [(id(p), (p.detach() - b).double()) for p, b in zip(model.parameters(), before)]
    opt.second_step(zero_grad=True)
    on = sum(float((e**2).sum()) for i, e in eps if i in subset) ** 0.5
    off = sum(float((e**2).sum()) for i, e in eps if i not in subset) ** 0.5
    return losses[0], losses[-1], on, off


n_norm = sum(p.numel() for p in init.parameters() if id(p) in norm_ids(init))
n_all = sum(p.numel() for p in init.parameters())
print(f"normalization parameters: {n_norm} of {n_all} ({n_norm / n_all:.4f})")
for kind in ("sam", "sam-on", "rho=0 on the rest"):
    first, last, on, off = run(kind)
    print(f"{kind}: loss {first:.4f} -> {last:.4f}; |eps| on the norm layers {on:.6f}, elsewhere {off:.6g}")
