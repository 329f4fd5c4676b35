"""Seed-level statistics: the t quantile against known values and its own CDF, the interval's coverage, and the
verdict rule (PASS wholly on the claim's side, FAIL wholly on the other, INCONCLUSIVE when it straddles)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from samkit.experiments.stats import INCONCLUSIVE, SeedInterval, judge, seed_interval, t_cdf, t_quantile


@pytest.mark.parametrize(
    ("p", "df", "value"),
    # standard table values (e.g. any statistics textbook's t table)
    [(0.95, 1, 6.3138), (0.95, 2, 2.9200), (0.95, 4, 2.1318), (0.95, 9, 1.8331), (0.975, 30, 2.0423), (0.9, 4, 1.5332)],
)
def test_t_quantile_matches_the_table(p, df, value):
    assert t_quantile(p, df) == pytest.approx(value, abs=1e-4)
    assert t_quantile(1 - p, df) == pytest.approx(-value, abs=1e-4)


@pytest.mark.parametrize("df", [1, 3, 7, 25])
def test_t_cdf_is_the_integral_of_the_density(df):
    # Student's t density, integrated numerically from 0 (CDF = 1/2 there by symmetry)
    c = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)
    x = np.linspace(0.0, 2.5, 20001)
    dens = c * (1 + x**2 / df) ** (-(df + 1) / 2)
    integral = float(np.sum((dens[1:] + dens[:-1]) / 2 * np.diff(x)))
    assert t_cdf(2.5, df) == pytest.approx(0.5 + integral, abs=1e-8)
    assert t_cdf(-2.5, df) == pytest.approx(0.5 - integral, abs=1e-8)


def test_the_interval_covers_the_mean_nine_times_in_ten():
    # normal data, n = 5 seeds: the 90% interval holds the true mean in 90% of repetitions (binomial sd ≈ 0.5%)
    rng = np.random.default_rng(0)
    trials = 4000
    hits = 0
    for _ in range(trials):
        iv = seed_interval(rng.normal(1.0, 0.3, 5))
        hits += iv.lo <= 1.0 <= iv.hi
    assert 0.88 <= hits / trials <= 0.92


def test_interval_width_and_special_cases():
    iv = seed_interval([1.0, 2.0, 3.0])
    half = t_quantile(0.95, 2) * 1.0 / math.sqrt(3)
    assert (iv.mean, iv.lo, iv.hi) == pytest.approx((2.0, 2.0 - half, 2.0 + half))
    one = seed_interval([0.7])
    assert one.lo == -math.inf and one.hi == math.inf and judge(one, "<=", 0.75) == INCONCLUSIVE
    same = seed_interval({4: 0.0, 5: 0.0, 6: 0.0})
    assert (same.lo, same.hi, same.seeds) == (0.0, 0.0, (4, 5, 6))
    with pytest.raises(ValueError, match="finite"):
        seed_interval([1.0, float("nan")])
    with pytest.raises(ValueError, match="at least one"):
        seed_interval([])
    with pytest.raises(ValueError, match="side"):
        judge(iv, "==", 1.0)


@pytest.mark.parametrize(
    ("lo", "hi", "side", "thr", "verdict"),
    [
        (1.1, 2.0, ">=", 1.0, "PASS"),
        (1.0, 2.0, ">=", 1.0, "PASS"),  # at the threshold counts for "≥"
        (1.0, 2.0, ">", 1.0, INCONCLUSIVE),  # ... and not for ">"
        (0.2, 0.9, ">=", 1.0, "FAIL"),
        (0.5, 1.5, ">=", 1.0, INCONCLUSIVE),
        (0.5, 0.7, "<=", 0.75, "PASS"),
        (0.8, 0.9, "<=", 0.75, "FAIL"),
        (0.7, 0.8, "<", 0.75, INCONCLUSIVE),
    ],
)
def test_judge(lo, hi, side, thr, verdict):
    assert judge(SeedInterval((0.0,), (0,), (lo + hi) / 2, lo, hi), side, thr) == verdict


def test_a_tie_cannot_pass_and_swapped_data_fail():
    # "SAM's stable range reaches at least one grid step further": per-seed differences
    assert judge(seed_interval([0, 0, 0, 0]), ">=", 1) == "FAIL"  # a tie
    assert judge(seed_interval([-2, -1, -3, -2]), ">=", 1) == "FAIL"  # the methods swapped
    assert judge(seed_interval([2, 1, 3, 2]), ">=", 1) == "PASS"
    assert judge(seed_interval([2, 0, 3, 0]), ">=", 1) == INCONCLUSIVE  # half the seeds tie: more seeds would decide
