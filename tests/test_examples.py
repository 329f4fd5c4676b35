"""The runnable examples keep running and print what they claim (short settings); the tests read their numbers."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from samkit.data import DEFAULT_FASHION_MNIST_DIR, ENV_VAR

EXAMPLES = Path(__file__).parent.parent / "examples"
NUMBER = r"[-+]?(?:\d+\.?\d*(?:e[-+]?\d+)?|nan|inf)"


def _run(name, *args, env=None):
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args], capture_output=True, text=True, timeout=300, env=env
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def _numbers(line: str) -> list[float]:
    return [float(v) for v in re.findall(NUMBER, line)]


def test_sam_vs_usam_demo_shows_usam_diverging_exactly_past_its_threshold_and_sam_bounded():
    out = _run("sam_vs_usam.py")
    rows = [line.split() for line in out.splitlines() if line.strip() and line.split()[0].replace(".", "").isdigit()]
    assert [float(r[0]) for r in rows] == [0.0, 0.005, 0.01, 0.05, 0.1, 0.5]
    beta, eta = 10.0, 0.9 * 2 / 10.0
    for rho, thr, sam, usam in rows:
        assert float(thr) == pytest.approx(2 / (beta + float(rho) * beta**2), abs=5e-5)  # printed with 4 decimals
        # SAM settles in the 2-cycle w = ±ηβρ/(2 − ηβ) along the top eigenvector: loss ½β(ηβρ/(2 − ηβ))²
        cycle = 0.5 * beta * (eta * beta * float(rho) / (2 - eta * beta)) ** 2
        assert sam != "diverged" and float(sam) == pytest.approx(cycle, rel=1e-3, abs=1e-40)
        assert (usam != "diverged") == (eta < float(thr))  # USAM diverges exactly where η > 2/(β + ρβ²)
        if usam != "diverged":
            assert float(usam) < 1e-3  # and goes to the minimum otherwise


def test_accumulation_full_mode_is_sam_on_the_whole_batch_and_m_sharpness_is_not():
    out = _run("accumulation.py", "--steps", "3")
    lines = {line.split(":")[0].strip(): _numbers(line.split(":", 1)[1]) for line in out.splitlines()}
    first, last, steps, _micro, diff = lines["full"]
    assert steps == 3 and last < first and diff < 1e-6
    first, last, _, _, diff = lines["m-sharpness"]
    assert last < first and diff > 1e-4


def test_compiled_model_matches_the_eager_run():
    out = _run("compile.py", "--steps", "3")
    assert out.startswith("compiled (aot_eager):")
    first, last, steps, eager_last, diff = _numbers(out.split(":", 1)[1])
    assert steps == 3 and last < first and last == eager_last and diff < 1e-6


def test_bn_amp_example_keeps_one_batchnorm_update_per_step():
    out = _run("bn_amp.py", "--steps", "1", "--batch", "8")  # one step: fp16 convolutions are slow on a CPU
    for precision in ("bf16", "fp16"):
        line = next(line for line in out.splitlines() if line.startswith(precision))
        first, _, steps, skipped, per_step = _numbers(line.split(":", 1)[1])
        assert steps + skipped == 1 and 0 < first < 10 and per_step == 1  # two forward passes, one BN update
        if precision == "bf16":
            assert skipped == 0  # bf16 needs no scaler and never skips


@pytest.mark.skipif(
    not Path(DEFAULT_FASHION_MNIST_DIR, "train-images-idx3-ubyte.gz").exists(),
    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)",
)
def test_train_fashion_mnist_example_compares_sgd_sam_and_usam(tmp_path):
    env = {k: v for k, v in __import__("os").environ.items() if k != ENV_VAR}
    out = _run(
        "train_fashion_mnist.py", "--model", "mlp", "--subset", "500", "--epochs", "1", "--out", str(tmp_path), env=env
    )
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()[1:]}
    assert sorted(rows) == ["sam", "sgd", "usam"]
    for name, (acc, eig, _eps, status) in rows.items():
        assert status == "completed" and 0.3 < float(acc) <= 1 and float(eig) > 0, name
        assert (tmp_path / name / "metrics.csv").exists() and (tmp_path / name / "checkpoint.pt").exists()
    assert float(rows["sgd"][2]) == 0  # no perturbation
    assert float(rows["sam"][2]) == 0.05  # ‖ε‖ = ρ exactly for SAM
    assert 0 < float(rows["usam"][2]) != 0.05  # ρ‖g‖ for USAM
