"""Every experiment of the paper at its tiny preset: its claims PASS, and FAIL when USAM's results are fed as SAM's."""

from __future__ import annotations

import pytest

#: experiment -> (its claims, the claims whose verdict must flip to FAIL when SAM and USAM rows are swapped)
CASES = {
    "E1": (["E1.1", "E1.2"], ["E1.1", "E1.2"]),
    "E2": (["E2.1", "E2.2", "E2.3"], ["E2.1", "E2.2", "E2.3"]),
    "E3": (["E3.1", "E3.2", "E3.3", "E3.4", "E3.5", "E3.6"], ["E3.2", "E3.3", "E3.5", "E3.6"]),
    "E4": (["E4.1", "E4.2", "E4.3"], ["E4.1", "E4.2", "E4.3"]),
    "E5": (["E5.1", "E5.2", "E5.3"], ["E5.2", "E5.3"]),
    "E6": (["E6.1", "E6.2"], ["E6.1", "E6.2"]),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_tiny_preset_every_claim_passes_with_its_files(name, tiny_runs, kit):
    exp, res, cfg, data, d = tiny_runs(name)
    claim_ids = CASES[name][0]
    assert kit.verdicts(res.claims) == {i: "PASS" for i in claim_ids}
    for c in res.claims:
        assert c.measured and c.prediction and c.tolerance and c.experiment == name
        assert all((d / f).is_file() for f in c.data), c.data
    for f in res.figures:
        assert (d / "figures" / f.file).stat().st_size > 10_000
        assert f.caption and set(f.claims) <= set(claim_ids)
    # the claims are a function of the CSV files on disk: recomputing them gives the same verdicts and numbers
    again = exp.claims(cfg, data)
    assert [(c.id, c.verdict, c.measured) for c in again] == [(c.id, c.verdict, c.measured) for c in res.claims]


@pytest.mark.parametrize("name", sorted(CASES))
def test_usam_results_fed_as_sam_fail(name, tiny_runs, kit):
    exp, _, cfg, data, _ = tiny_runs(name)
    swap_fails = CASES[name][1]
    got = kit.verdicts(exp.claims(cfg, kit.swap_methods(data)))
    assert {i: got[i] for i in swap_fails} == {i: "FAIL" for i in swap_fails}
