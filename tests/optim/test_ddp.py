"""Distributed SAM with 2 processes on the gloo backend (CPU), launched through torchrun."""

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed as dist

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")

HERE = Path(__file__).parent
TESTS = HERE.parent


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(script, *args, timeout=240):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1"]
    cmd += [f"--master_port={_free_port()}", str(script), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp") / "res.json"
    _torchrun(TESTS / "helpers" / "ddp_worker.py", str(out))
    return json.loads(out.read_text())


def test_local_mode_perturbs_per_replica_and_keeps_replicas_identical(ddp_results):
    assert ddp_results["world"] == 2
    assert ddp_results["local_eps_max_diff"] > 1e-6  # each rank's epsilon comes from its own batch
    assert ddp_results["local_params_max_diff"] == 0.0


def test_global_mode_equals_single_process_sam_on_the_whole_batch(ddp_results):
    assert ddp_results["global_vs_single_max_diff"] < 1e-12
    assert ddp_results["local_vs_single_max_diff"] > 1e-8  # local mode is a different algorithm


def test_checkpoint_saved_on_rank_zero_resumes_exactly(ddp_results):
    assert ddp_results["resume_max_diff"] == 0.0
    assert ddp_results["resume_steps"] == 4


def test_ddp_example_trains_and_keeps_the_replicas_identical():
    proc = _torchrun(TESTS.parent / "examples" / "ddp.py", "--steps", "5")
    pattern = r"loss (\S+) -> (\S+) after 5 SAM steps on (\d) ranks; max weight difference between replicas: (\S+)"
    found = re.search(pattern, proc.stdout)
    assert found, proc.stdout
    first, last, ranks, spread = (float(v) for v in found.groups())
    assert ranks == 2 and last < first and spread == 0.0
