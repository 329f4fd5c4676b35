"""E3 (Theorem 1 phase diagrams, SAM 2-cycle, strongly convex case) at its tiny preset: claims PASS, and FAIL on data that contradict them."""

from __future__ import annotations

NAME = "E3"


def test_gd_phase_labels_flipped_fail_e3_1(tiny, kit):
    exp, _, cfg, data, _ = tiny
    bad = kit.edit(data, "phase", {"method": "gd"}, diverged=lambda r: not r["diverged"])
    assert kit.verdicts(exp.claims(cfg, bad))["E3.1"] == "FAIL"


def test_wrong_cycle_amplitude_fails_e3_4(tiny, kit):
    exp, _, cfg, data, _ = tiny
    bad = kit.edit(data, "sam_cycle", {}, amplitude=lambda r: 1.01 * r["amplitude"])
    assert kit.verdicts(exp.claims(cfg, bad))["E3.4"] == "FAIL"
