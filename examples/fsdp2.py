"""SAM with FSDP2 (``fully_shard``): ``torchrun --nproc_per_node=2 examples/fsdp2.py``, or ``python examples/fsdp2.py``
(which starts 2 gloo processes on CPU itself).

Every parameter is sharded over the ranks; each rank sees its own half of the batch and FSDP2 reduce-scatters the
gradient, so each rank holds its slice of the gradient of the global batch. ``perturbation="global"`` (required under
FSDP2: ``"local"`` is refused) takes ε from that gradient, with ‖g‖ reduced over the shards: this is single-process
SAM on the global batch. ``--bf16`` adds a ``MixedPrecisionPolicy`` (bf16 compute, float32 reductions).
"""

import argparse
import os
import socket

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

import samkit


def train(args: argparse.Namespace) -> None:
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)  # the same initial weights on every rank, before sharding
    model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 1))
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if args.bf16 else None
    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer, mp_policy=mp or MixedPrecisionPolicy())
    fully_shard(model, mp_policy=mp or MixedPrecisionPolicy())
    opt = samkit.SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.05, momentum=0.9, perturbation="global")
    g = torch.Generator().manual_seed(rank)  # each rank sees its own shard of the data
    x = torch.randn(64, 10, generator=g)
    y = x[:, :1].sin()

    def closure():
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x).float(), y)
        loss.backward()
        return loss

    losses = [opt.step(closure).item() for _ in range(args.steps)]
    print(f"rank {rank}/{world}: loss {losses[0]:.4f} -> {losses[-1]:.4f} after {args.steps} SAM steps", flush=True)


def worker(rank: int, world: int, port: int, args: argparse.Namespace) -> None:
    """One process of ``python examples/fsdp2.py`` (no torchrun): join the group, train, leave."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    run(args)


def run(args: argparse.Namespace) -> None:
    dist.init_process_group("gloo")
    try:
        train(args)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--bf16", action="store_true", help="bf16 compute through MixedPrecisionPolicy")
    args = parser.parse_args()
    if "RANK" in os.environ:  # started by torchrun
        run(args)
        return
    with socket.socket() as s:  # a free port for the 2 processes started here
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(worker, args=(2, port, args), nprocs=2)


if __name__ == "__main__":
    main()
