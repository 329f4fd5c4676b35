"""E1 (matrix sensing far from the minimum) at its tiny preset: claims PASS, and FAIL on data that contradict them."""

from __future__ import annotations

NAME = "E1"


def test_gd_not_converging_fails_e1_1(tiny, kit):
    exp, _, cfg, data, _ = tiny
    bad = kit.edit(data, "summary", {"method": "gd"}, final_loss=lambda r: r["loss0"])
    assert kit.verdicts(exp.claims(cfg, bad))["E1.1"] == "FAIL"


def test_usam_failing_at_every_rho_fails_e1_2(tiny, kit):
    # rho* must lie inside the grid: USAM has to converge at the smallest rho
    exp, _, cfg, data, _ = tiny
    bad = kit.edit(data, "summary", {"method": "usam"}, diverged=True)
    assert kit.verdicts(exp.claims(cfg, bad))["E1.2"] == "FAIL"


def test_one_sam_divergence_fails_e1_1(tiny, kit):
    exp, _, cfg, data, _ = tiny
    bad = kit.edit(data, "summary", {"method": "sam", "rho": max(cfg["rhos"])}, diverged=True)
    assert kit.verdicts(exp.claims(cfg, bad))["E1.1"] == "FAIL"
