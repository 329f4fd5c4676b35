"""The runnable examples keep running and print what they claim (short settings)."""

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).parent.parent / "examples"


def _run(name, *args):
    proc = subprocess.run([sys.executable, str(EXAMPLES / name), *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_sam_vs_usam_demo_shows_usam_diverging_and_sam_bounded():
    out = _run("sam_vs_usam.py")
    rows = [line.split() for line in out.splitlines() if line.strip() and line.split()[0].replace(".", "").isdigit()]
    assert len(rows) == 6
    for _rho, thr, sam, usam in rows:
        assert sam != "diverged"
        eta_below_threshold = 0.18 < float(thr)
        assert (usam != "diverged") == eta_below_threshold


def test_accumulation_example():
    out = _run("accumulation.py", "--steps", "3")
    assert "full" in out and "m-sharpness" in out


def test_compile_example():
    assert "compiled (aot_eager)" in _run("compile.py", "--steps", "2")


@pytest.mark.parametrize("steps", ["1"])
def test_bn_amp_example(steps):
    out = _run("bn_amp.py", "--steps", steps, "--batch", "8")
    assert "bf16: loss" in out and "fp16: loss" in out
