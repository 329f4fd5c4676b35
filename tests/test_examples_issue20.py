"""The examples of issue 20 run and print what they claim (short settings); the tests read their numbers."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).parent.parent / "examples"
NUMBER = r"[-+]?(?:\d+\.?\d*(?:e[-+]?\d+)?|nan|inf)"


def _run(name, *args):
    proc = subprocess.run([sys.executable, str(EXAMPLES / name), *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def _lines(out):
    return {
        line.split(":")[0].strip(): [float(v) for v in re.findall(NUMBER, line.split(":", 1)[1])]
        for line in out.splitlines()
        if ":" in line
    }


def test_late_sam_is_sgd_until_the_switch_and_costs_fewer_gradient_evaluations_than_sam():
    out = _run("late_sam.py", "--steps", "12", "--start", "0.5")
    rows = _lines(out)
    steps = 12
    switch = int(re.search(r"late sam starts at step (\d+)", out).group(1))
    assert switch == 6
    gap = rows["late sam starts at step 6; max |w_late - w_sgd| at the switch"][-1]
    assert gap == 0.0  # bit for bit SGD before the switch
    for kind, evaluations in (("sgd", steps), ("sam", 2 * steps), ("late sam", switch + 2 * (steps - switch))):
        first, last, n, total = rows[kind]
        assert n == evaluations and total == steps
        assert last < first  # every method lowers the loss
    assert rows["late sam"][1] != rows["sgd"][1]  # and after the switch it is not SGD any more


def test_sam_on_perturbs_the_normalization_layers_alone_by_rho_and_rho_zero_on_the_rest_does_not():
    out = _run("sam_on.py", "--steps", "5")
    rows = _lines(out)
    n_norm, n_all, fraction = rows["normalization parameters"]
    assert 0 < n_norm < n_all and fraction < 0.1
    first, last, on, off = rows["sam-on"]
    assert on == pytest.approx(0.05, abs=2e-6) and off == 0.0  # ‖ε_S‖ = ρ, nothing elsewhere
    assert last < first
    _, _, on_sam, off_sam = rows["sam"]
    assert 0 < on_sam < 0.05 and off_sam > 0  # plain SAM spreads ε over every parameter
    _, _, on_zero, off_zero = rows["rho=0 on the rest"]
    assert off_zero == 0.0 and on_zero < 0.5 * 0.05  # the rest is still in ‖g‖: ε_S shrinks by ‖g_S‖/‖g‖


def test_the_lightning_example_equals_the_manual_samkit_loop():
    pytest.importorskip("lightning.pytorch")
    out = _run("lightning_sam.py", "--steps", "6", "--accumulate", "2")
    assert "steps 6" in out
    diff = float(re.findall(NUMBER, out.splitlines()[-1].split("=", 1)[1])[0])
    assert diff == 0.0  # the mixin's step is the manual step_accumulated step


def test_the_hugging_face_example_trains_below_chance():
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    out = _run("hf_trainer_sam.py", "--steps", "30")
    assert "SAM steps 30" in out
    final, chance = (float(v) for v in re.findall(r"final loss ([0-9.]+) \(chance: ([0-9.]+)\)", out)[0])
    assert final < 0.8 * chance  # it learned the counting task
