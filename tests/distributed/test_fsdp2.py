"""SAM under FSDP2 (``fully_shard``) with 2 processes on the gloo backend (CPU), launched through torchrun.

The worker (tests/helpers/fsdp_worker.py) measures; these tests assert. FSDP2 with ``perturbation="global"`` is
single-process SAM on the global batch; the contrary check shows that the all-gather of the norms is what makes it so.
"""

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

import samkit
from samkit.core import global_norm
from samkit.optim import sharded
from samkit.optim.ops import list_ops


def _fsdp2_available():
    try:
        from torch.distributed.fsdp import fully_shard  # noqa: F401
    except ImportError:
        return False
    return True


needs_gloo = pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available() or not _fsdp2_available(),
    reason="needs torch.distributed with the gloo backend and FSDP2 (torch.distributed.fsdp.fully_shard)",
)

TESTS = Path(__file__).parent.parent
WORKER = TESTS / "helpers" / "fsdp_worker.py"
RULES = ("sam", "usam", "unified", "asam")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env():
    return dict(os.environ, OMP_NUM_THREADS="1")


def _torchrun(script, *args, timeout=240):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1"]
    cmd += [f"--master_port={_free_port()}", str(script), *map(str, args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_env())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def fsdp(tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp2")
    _torchrun(WORKER, "run", out)  # ... saves a checkpoint after step 2, and step 3 as the reference
    _torchrun(WORKER, "resume", out)  # fresh processes: load, step 3
    return {mode: json.loads((out / f"{mode}.json").read_text()) for mode in ("run", "resume")}


@needs_gloo
@pytest.mark.parametrize("rule", RULES)
def test_fsdp2_global_equals_single_process_sam_on_the_global_batch(fsdp, rule):
    res = fsdp["run"]
    assert res["world"] == 2
    assert res[f"{rule}_float32"] < 1e-5  # relative, after 3 steps (SGD with momentum)
    assert res[f"{rule}_float64"] < 1e-10


@needs_gloo
def test_the_single_tensor_path_agrees(fsdp):
    assert fsdp["run"]["foreach_false_float64"] < 1e-10


@needs_gloo
def test_without_the_reduction_of_the_norm_over_shards_fsdp2_differs(fsdp):
    # the contrary check: each rank normalizing by the norm of its own slices is another algorithm
    assert fsdp["run"]["no_gather_sam"] > 1e-2
    assert fsdp["run"]["no_gather_unified"] > 1e-2


@needs_gloo
def test_bf16_mixed_precision_stays_within_bf16_tolerance_of_float32(fsdp):
    res = fsdp["run"]
    assert res["bf16_param_dtype"] == "torch.float32"  # the sharded parameters keep their dtype
    assert 0.0 < res["bf16_vs_fp32"] < 2e-2  # bf16 did change the numbers, by no more than its rounding


@needs_gloo
def test_accumulation_equals_single_process_accumulation(fsdp):
    assert fsdp["run"]["accumulation_float32"] < 1e-5
    assert fsdp["run"]["accumulation_float64"] < 1e-10
    assert fsdp["run"]["m_sharpness_float64"] < 1e-10  # one ε per micro-batch, from the gradient over the ranks


@needs_gloo
def test_local_perturbation_is_refused_with_a_clear_error(fsdp):
    msg = fsdp["run"]["local_error"]
    assert "perturbation='local'" in msg and "perturbation='global'" in msg and "FSDP2" in msg


@needs_gloo
def test_batchnorm_statistics_are_those_of_the_first_pass(fsdp):
    assert fsdp["run"]["bn_running_mean_diff"] == 0.0
    assert fsdp["run"]["bn_batches"] == 1


@needs_gloo
@pytest.mark.parametrize("route", ["dcp", "files"])
def test_checkpoint_resumes_bit_identically_in_fresh_processes(fsdp, route):
    res = fsdp["resume"][route]
    assert res["max_diff"] == 0.0
    assert res["steps"] == 3


@needs_gloo
def test_fsdp2_example_runs_as_one_process_that_starts_two():
    proc = subprocess.run(
        [sys.executable, str(TESTS.parent / "examples" / "fsdp2.py"), "--steps", "5"],
        capture_output=True,
        text=True,
        timeout=240,
        env=_env(),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    found = re.findall(r"rank (\d)/2: loss (\S+) -> (\S+) after 5 SAM steps", proc.stdout)
    assert sorted(r for r, _, _ in found) == ["0", "1"], proc.stdout
    assert all(float(last) < float(first) for _, first, last in found)


# ------------------------------------------------------------------ in this process, no process group
def test_plain_parameters_keep_the_plain_list_operations():
    params = [{"params": [torch.nn.Parameter(torch.ones(2))]}]
    for foreach in (True, False):
        assert sharded.sharded_ops(list_ops(foreach), params, "local", fused=False) is list_ops(foreach)
    opt = samkit.SAM([torch.nn.Parameter(torch.ones(2))], torch.optim.SGD, lr=0.1)
    assert opt.ops is list_ops(True)
    assert not sharded.is_dtensor(torch.ones(2))


def test_global_norms_of_plain_tensors_are_the_global_norm():
    g = torch.Generator().manual_seed(0)
    a = [torch.randn(5, generator=g), torch.randn(3, 2, generator=g)]
    b = [torch.tensor([3e30]), torch.tensor([4e30])]
    norms = sharded.global_norms([a, b])
    assert torch.allclose(norms[0], global_norm(a), rtol=1e-6, atol=0)
    assert norms[1].item() == pytest.approx(5e30, rel=1e-6)
