"""E2 (matrix sensing near a minimum) at its tiny preset: claims PASS, and FAIL on data that contradict them."""

from __future__ import annotations

NAME = "E2"


def test_tiny_values_are_in_the_calibrated_regime(tiny, kit):
    _, res, cfg, data, _ = tiny
    e = data["endpoints"]
    assert e.first("loss_warm") < 1e-6  # the start is (close to) a global minimum
    assert e.where(method="gd").first("moved") < 0.01 * e.where(method="sam").col("moved").min()
    assert (e.where(method="sam").col("moved") > 0.3).all()
    c = {c.id: c for c in res.claims}
    assert c["E2.3"].values["max_distance"] <= 0.5 * c["E2.3"].values["min_moved"]


def test_gd_moving_fails_e2_1_and_raises_the_bar_of_e2_2(tiny, kit):
    exp, _, cfg, data, _ = tiny
    sam_moved = float(data["endpoints"].where(method="sam").col("moved").min())
    bad = kit.edit(data, "endpoints", {"method": "gd"}, moved=sam_moved)  # GD moved as much as SAM
    got = kit.verdicts(exp.claims(cfg, bad))
    assert got["E2.1"] == "FAIL" and got["E2.2"] == "FAIL"


def test_sam_not_at_a_minimum_or_not_flatter_fails_e2_2(tiny, kit):
    exp, _, cfg, data, _ = tiny
    assert (
        kit.verdicts(exp.claims(cfg, kit.edit(data, "endpoints", {"method": "sam"}, loss_polished=1e-2)))["E2.2"]
        == "FAIL"
    )
    sh = data["endpoints"].first("sharpness_warm")
    assert kit.verdicts(exp.claims(cfg, kit.edit(data, "endpoints", {"method": "sam"}, sharpness=sh)))["E2.2"] == "FAIL"


def test_sam_endpoints_far_apart_fail_e2_3(tiny, kit):
    exp, _, cfg, data, _ = tiny
    mv = float(data["endpoints"].where(method="sam").col("moved").min())
    far = kit.edit(data, "pairwise_distance", {"method_a": "sam", "method_b": "sam"}, distance=0.6 * mv)
    assert kit.verdicts(exp.claims(cfg, far))["E2.3"] == "FAIL"
    rows = data["endpoints"].where(method="sam").rows
    diff = kit.edit(
        data, "endpoints", {"method": "sam", "rho": rows[0]["rho"]}, sharpness=lambda r: 1.05 * r["sharpness"]
    )
    assert kit.verdicts(exp.claims(cfg, diff))["E2.3"] == "FAIL"


def test_unstable_usam_radius_is_reported_against_theorem_1(tiny, kit):
    _, res, cfg, _, _ = tiny
    c = {c.id: c for c in res.claims}["E2.1"]
    assert all(cfg["eta"] < t for t in c.values["usam_threshold"])  # the tiny USAM radii are in USAM's stable range
    assert "2/(λ+ρλ²)" in c.setting
