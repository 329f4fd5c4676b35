"""E5 (Theorems 3-5, single neuron) at its tiny preset: claims PASS, and FAIL on data that contradict them."""

from __future__ import annotations

NAME = "E5"


def test_gd_limit_off_the_prediction_fails_e5_1(tiny, kit):
    exp, _, cfg, data, _ = tiny
    bad = kit.edit(data, "final", {"sweep": "eta_sweep", "method": "gd"}, y2_final=lambda r: 0.5 * r["y2_final"])
    assert kit.verdicts(exp.claims(cfg, bad))["E5.1"] == "FAIL"
