"""Run under ``python -m torch.distributed.run --nproc_per_node=2 ddp_worker.py OUT.json`` (gloo, CPU).

Checks samkit.SAM's distributed semantics and writes the measurements to OUT.json (rank 0) for
tests/optim/test_ddp.py to assert on.
"""

import copy
import gc
import json
import sys
import tempfile

import torch
import torch.distributed as dist
from closures import mse_closure
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

import samkit


def make_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 1)).double()


def rank_batch(rank):
    g = torch.Generator().manual_seed(100 + rank)
    return torch.randn(6, 5, generator=g, dtype=torch.float64), torch.randn(6, 1, generator=g, dtype=torch.float64)


def gather(t):
    out = [torch.zeros_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(out, t.contiguous())
    return out


def flat(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def sam_steps(model, opt, x, y, n):
    for _ in range(n):
        opt.step(mse_closure(model, opt, x, y))


def checks(out_path):
    rank, world = dist.get_rank(), dist.get_world_size()
    x, y = rank_batch(rank)
    res = {"world": world}

    # local perturbation: per-replica epsilon, identical parameters after every step
    model = DDP(make_model())
    opt = samkit.SAM(
        model.parameters(), torch.optim.SGD, rho=0.1, lr=0.1, momentum=0.9, model=model, perturbation="local"
    )
    eps_differ, params_equal = [], []
    for _ in range(3):
        before = flat(model)
        with opt.first_pass():
            nn.functional.mse_loss(model(x), y).backward()
        opt.first_step(zero_grad=True)
        eps = flat(model) - before
        e = gather(eps)
        eps_differ.append(float((e[0] - e[1]).abs().max()))
        nn.functional.mse_loss(model(x), y).backward()
        opt.second_step(zero_grad=True)
        p = gather(flat(model))
        params_equal.append(float((p[0] - p[1]).abs().max()))
    res["local_eps_max_diff"] = min(eps_differ)
    res["local_params_max_diff"] = max(params_equal)

    # global perturbation: equals single-process SAM on the concatenated batch
    model = DDP(make_model())
    opt = samkit.SAM(
        model.parameters(), torch.optim.SGD, rho=0.1, lr=0.1, momentum=0.9, model=model, perturbation="global"
    )
    sam_steps(model, opt, x, y, 3)
    xs = torch.cat([rank_batch(r)[0] for r in range(world)])
    ys = torch.cat([rank_batch(r)[1] for r in range(world)])
    single = make_model()
    sopt = samkit.SAM(single.parameters(), torch.optim.SGD, rho=0.1, lr=0.1, momentum=0.9)
    sam_steps(single, sopt, xs, ys, 3)
    res["global_vs_single_max_diff"] = float((flat(model) - flat(single)).abs().max())
    # and it differs from local mode (the comparison above can fail)
    local = DDP(make_model())
    lopt = samkit.SAM(
        local.parameters(), torch.optim.SGD, rho=0.1, lr=0.1, momentum=0.9, model=local, perturbation="local"
    )
    sam_steps(local, lopt, x, y, 3)
    res["local_vs_single_max_diff"] = float((flat(local) - flat(single)).abs().max())

    # checkpoint saved on rank 0 resumes exactly
    model = DDP(make_model())
    opt = samkit.SAM(model.parameters(), torch.optim.SGD, rho=0.1, lr=0.1, momentum=0.9, model=model)
    sam_steps(model, opt, x, y, 2)
    path = [tempfile.mktemp(suffix=".pt") if rank == 0 else None]
    dist.broadcast_object_list(path, src=0)
    if rank == 0:
        torch.save({"model": model.module.state_dict(), "opt": opt.state_dict()}, path[0])
    dist.barrier()
    sam_steps(model, opt, x, y, 2)
    reference = flat(model)
    ckpt = torch.load(path[0])
    resumed = DDP(make_model())
    resumed.module.load_state_dict(ckpt["model"])
    ropt = samkit.SAM(resumed.parameters(), torch.optim.SGD, rho=0.1, lr=0.1, momentum=0.9, model=resumed)
    ropt.load_state_dict(copy.deepcopy(ckpt["opt"]))
    sam_steps(resumed, ropt, x, y, 2)
    res["resume_max_diff"] = float((flat(resumed) - reference).abs().max())
    res["resume_steps"] = ropt.steps

    if rank == 0:
        with open(out_path, "w") as f:
            json.dump(res, f)


def main():
    dist.init_process_group("gloo")
    checks(sys.argv[1])
    gc.collect()  # free the DDP reducers before the process group goes (avoids a gloo teardown abort)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
