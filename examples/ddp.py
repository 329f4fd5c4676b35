"""SAM with DistributedDataParallel: run with ``torchrun --nproc_per_node=2 examples/ddp.py``.

Each replica perturbs with its own gradient (``perturbation="local"``, Foret et al.'s m-sharpness with m = the
per-replica batch): ``opt.step`` runs the whole first forward and backward under ``model.no_sync()``, then the
second pass all-reduces as usual so every replica takes the same step. ``perturbation="global"`` averages the
first-pass gradient over replicas instead. gloo on CPU, NCCL on GPU.
"""

import argparse
import gc

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

import samkit


def train(args: argparse.Namespace, backend: str) -> None:
    rank = dist.get_rank()
    device = torch.device(f"cuda:{rank % torch.cuda.device_count()}" if backend == "nccl" else "cpu")
    torch.manual_seed(0)  # same initial weights on every rank
    model = DDP(nn.Sequential(nn.Linear(10, 64), nn.ReLU(), nn.Linear(64, 1)).to(device))
    opt = samkit.SAM(
        model.parameters(),
        torch.optim.SGD,
        rho=0.05,
        lr=0.05,
        momentum=0.9,
        model=model,
        perturbation=args.perturbation,
    )
    g = torch.Generator().manual_seed(rank)  # each rank sees its own shard of data
    x = torch.randn(64, 10, generator=g).to(device)
    y = x[:, :1].sin().to(device)

    def closure():
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss

    losses = [opt.step(closure).item() for _ in range(args.steps)]
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    replicas = [torch.zeros_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(replicas, flat)  # every replica took the same steps: identical weights
    spread = max((r - flat).abs().max().item() for r in replicas)
    if rank == 0:
        print(
            f"loss {losses[0]:.4f} -> {losses[-1]:.4f} after {args.steps} SAM steps on {dist.get_world_size()} "
            f"ranks; max weight difference between replicas: {spread:.1e}"
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--perturbation", choices=["local", "global"], default="local")
    args = parser.parse_args()
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend)
    train(args, backend)
    gc.collect()  # release the DDP model before the process group (avoids a gloo teardown race)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
