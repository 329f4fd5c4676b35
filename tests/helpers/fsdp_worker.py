"""SAM under FSDP2 with 2 gloo processes on CPU, for tests/distributed/test_fsdp2.py.

``python -m torch.distributed.run --nproc_per_node=2 fsdp_worker.py run DIR``: the equality with single-process SAM
(per normalization, float32 and float64), the contrary check (no all-gather of the norms), mixed precision,
accumulation, ``perturbation="local"``, BatchNorm, and a checkpoint after step 2 (DCP and per-rank files) with the
uninterrupted step 3. ``... fsdp_worker.py resume DIR``: fresh processes load both checkpoints and take step 3.
Rank 0 writes DIR/run.json and DIR/resume.json.
"""

import gc
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

import samkit
from samkit.optim import sharded

sys.path.insert(0, str(Path(__file__).parent))
from ddp_worker import sam_steps as steps  # noqa: E402  (n closure steps of an MSE model: the same loop)

RULES = {
    "sam": {},
    "usam": {"normalization": "none"},
    "unified": {"normalization": "unified", "lam": 0.5},
    "asam": {"adaptive": True},
}


def make_model(dtype=torch.float32, bn=False):
    torch.manual_seed(0)
    norm = [nn.BatchNorm1d(8)] if bn else []
    layers = [nn.Linear(5, 8), *norm, nn.Tanh(), nn.Linear(8, 3), nn.Tanh(), nn.Linear(3, 1)]
    return nn.Sequential(*layers).to(dtype)  # the last bias has 1 entry: one rank's slice of it is empty


def shard(model, mp=None):
    kw = {} if mp is None else {"mp_policy": mp}
    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer, **kw)
    return fully_shard(model, **kw)


def batch(rank, dtype=torch.float32):
    g = torch.Generator().manual_seed(100 + rank)
    return torch.randn(6, 5, generator=g).to(dtype), torch.randn(6, 1, generator=g).to(dtype)


def global_batch(dtype=torch.float32):
    xs, ys = zip(*(batch(r, dtype) for r in range(dist.get_world_size())))
    return torch.cat(xs), torch.cat(ys)


def build(net, rule, base=torch.optim.SGD, **kw):
    opts = {"lr": 0.1, "momentum": 0.9} if base is torch.optim.SGD else {"lr": 0.01}
    return samkit.SAM(net.parameters(), base, rho=0.1, **RULES[rule], **opts, **kw)


def full(model):
    """Every parameter, unsharded, as one flat vector (the same on every rank)."""
    ps = [p.full_tensor() if sharded.is_dtensor(p) else p for p in model.parameters()]
    return torch.cat([p.detach().reshape(-1) for p in ps])


def rel(a, b):
    return float(((a - b).abs() / b.abs().clamp_min(1e-3)).max())


def fsdp_vs_single(rule, dtype, n=3, **kw):
    rank = dist.get_rank()
    model = shard(make_model(dtype))
    steps(model, build(model, rule, perturbation="global", model=model, **kw), *batch(rank, dtype), n)
    single = make_model(dtype)
    steps(single, build(single, rule), *global_batch(dtype), n)
    return rel(full(model), full(single))


def no_gather(rule):
    """The contrary check: each rank normalizes by the norm of its own slices (no all-gather of the norms)."""
    gather = sharded._gather_norms
    sharded._gather_norms = lambda local, key: local
    try:
        return fsdp_vs_single(rule, torch.float32)
    finally:
        sharded._gather_norms = gather


def mixed_precision(rule):
    """bf16 parameters in forward and backward, float32 reductions, against the float32 FSDP2 run."""
    x, y = batch(dist.get_rank())
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    runs = []
    for policy in (mp, None):
        model = shard(make_model(), policy)
        opt = build(model, rule, perturbation="global", model=model)
        steps(model, opt, x, y, 3)
        runs.append(full(model))
    return float((runs[0] - runs[1]).abs().max()), str(runs[0].dtype)


def accumulation(rule, dtype, mode="full"):
    """``step_accumulated`` over 2 micro-batches per rank against single-process accumulation on the global batch
    (``mode="m-sharpness"``: micro-batch j of the global batch is micro-batch j of every rank)."""
    rank = dist.get_rank()
    model = shard(make_model(dtype))
    opt = build(model, rule, perturbation="global", model=model)
    single = make_model(dtype)
    sopt = build(single, rule)
    x, y = batch(rank, dtype)
    xs, ys = zip(*(batch(r, dtype) for r in range(dist.get_world_size())))
    micro = [(torch.cat([x[s] for x in xs]), torch.cat([y[s] for y in ys])) for s in (slice(0, 3), slice(3, 6))]
    for _ in range(3):
        opt.step_accumulated(lambda b: mse(model, b), [(x[:3], y[:3]), (x[3:], y[3:])], mode=mode)
        sopt.step_accumulated(lambda b: mse(single, b), micro, mode=mode)
    return rel(full(model), full(single))


def mse(model, b):
    return nn.functional.mse_loss(model(b[0]), b[1])


def local_mode():
    model = shard(make_model())
    try:
        build(model, "sam")  # perturbation="local", the default
    except ValueError as err:
        return str(err)
    return ""


def batchnorm():
    """``model=``: the BatchNorm statistics after a SAM step are those of the first forward alone."""
    x, y = batch(dist.get_rank())
    model = shard(make_model(bn=True))
    opt = build(model, "sam", perturbation="global", model=model)
    steps(model, opt, x, y, 1)
    bn = model[1]
    ref = make_model(bn=True)[1]
    ref(make_model()[0](x))  # one forward through the first layer and the BatchNorm (training mode)
    return float((bn.running_mean - ref.running_mean).abs().max()), int(bn.num_batches_tracked)


def checkpoint(out):
    """Adam + SAM (ASAM), 2 steps, save (DCP and per-rank ``opt.state_dict()``), step 3: the reference."""
    rank = dist.get_rank()
    model = shard(make_model(torch.float64))
    opt = build(model, "asam", torch.optim.Adam, perturbation="global", model=model)
    x, y = batch(rank, torch.float64)
    steps(model, opt, x, y, 2)
    dcp.save(sharded.state_dict(model, opt), checkpoint_id=str(out / "dcp"))
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, out / f"rank{rank}.pt")
    steps(model, opt, x, y, 1)
    reference = full(model)  # (a collective: every rank)
    if rank == 0:
        torch.save(reference, out / "reference.pt")


def resume(out):
    rank = dist.get_rank()
    x, y = batch(rank, torch.float64)
    reference = torch.load(out / "reference.pt", weights_only=True)
    res = {}
    for route in ("dcp", "files"):
        model = shard(make_model(torch.float64))
        opt = build(model, "asam", torch.optim.Adam, perturbation="global", model=model)
        if route == "dcp":
            state = sharded.state_dict(model, opt)  # the template
            dcp.load(state, checkpoint_id=str(out / "dcp"))
            sharded.load_state_dict(model, opt, state)
        else:
            saved = torch.load(out / f"rank{rank}.pt", weights_only=True)
            model.load_state_dict(saved["model"])
            opt.load_state_dict(saved["opt"])
        steps(model, opt, x, y, 1)
        res[route] = {"max_diff": float((full(model) - reference).abs().max()), "steps": opt.steps}
    return res


def run(out):
    res = {"world": dist.get_world_size()}
    for rule in RULES:
        res[f"{rule}_float32"] = fsdp_vs_single(rule, torch.float32)
        res[f"{rule}_float64"] = fsdp_vs_single(rule, torch.float64)
    res["foreach_false_float64"] = fsdp_vs_single("sam", torch.float64, foreach=False)
    res["no_gather_sam"] = no_gather("sam")
    res["no_gather_unified"] = no_gather("unified")
    res["bf16_vs_fp32"], res["bf16_param_dtype"] = mixed_precision("sam")
    res["accumulation_float32"] = accumulation("sam", torch.float32)
    res["accumulation_float64"] = accumulation("unified", torch.float64)
    res["m_sharpness_float64"] = accumulation("sam", torch.float64, "m-sharpness")
    res["local_error"] = local_mode()
    res["bn_running_mean_diff"], res["bn_batches"] = batchnorm()
    checkpoint(out)
    return res


def main():
    mode, out = sys.argv[1], Path(sys.argv[2])
    dist.init_process_group("gloo")
    res = run(out) if mode == "run" else resume(out)
    if dist.get_rank() == 0:
        (out / f"{mode}.json").write_text(json.dumps(res))
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
