"""Seed-level statistics for claims: one number per seed, an interval over seeds, and a verdict from the interval.

A claim whose data depend on random seeds computes its statistic once per seed (paired by seed where the design
allows: SGD, SAM and USAM with the same seed share the initialisation and the batch order, so a per-seed difference
or ratio cancels what the seed alone decides) and judges the **interval over seeds**, never a pooled point:

* the interval is the two-sided ``level`` (default 90%) **Student-t confidence interval for the mean** of the
  per-seed values, ``mean ± t_{(1+level)/2, n−1} · sd / √n`` (``sd`` with ``n − 1`` degrees of freedom). With one
  seed it is unbounded; when every seed gives the same value it is that value;
* :func:`judge` gives **PASS** when the whole interval lies on the claim's side of the threshold, **FAIL** when the
  whole interval lies on the other side, and **INCONCLUSIVE** when it straddles the threshold (more seeds would
  decide). So a verdict moves only when the data move by the interval's width, not with a machine's last bits.

Example:
    >>> iv = seed_interval([2, 2, 3, 1], seeds=[0, 1, 2, 3])
    >>> round(iv.mean, 3), round(iv.lo, 3), round(iv.hi, 3)
    (2.0, 1.039, 2.961)
    >>> judge(iv, ">=", 1), judge(iv, ">=", 2), judge(iv, "<", 1)
    ('PASS', 'INCONCLUSIVE', 'FAIL')
    >>> judge(seed_interval([0.0, 0.0, 0.0]), ">=", 1)   # a tie: no spread, the whole interval is 0
    'FAIL'
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "LEVEL",
    "INCONCLUSIVE",
    "SIDES",
    "SeedInterval",
    "seed_interval",
    "judge",
    "all_of",
    "t_quantile",
    "t_cdf",
]

#: The confidence level of every seed interval (two-sided).
LEVEL = 0.90
#: The verdict of a claim whose interval over seeds straddles its threshold.
INCONCLUSIVE = "INCONCLUSIVE"
#: The sides a claim may require of its statistic: the statistic is ``SIDE threshold``.
SIDES = (">=", ">", "<=", "<")


def _betacf(a: float, b: float, x: float) -> float:
    """The continued fraction of the regularized incomplete beta function (modified Lentz's method)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        for aa in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """The CDF of Student's t distribution with ``df`` degrees of freedom.

    >>> round(t_cdf(0.0, 3), 12), round(t_cdf(6.313751514675, 1), 6)
    (0.5, 0.95)
    """
    if df <= 0:
        raise ValueError(f"df must be > 0, got {df!r}")
    x = df / (df + t * t)
    tail = 0.5 * _betainc(df / 2.0, 0.5, x)
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t distribution with ``df`` degrees of freedom (bisection on :func:`t_cdf`).

    >>> round(t_quantile(0.95, 1), 4), round(t_quantile(0.95, 2), 4), round(t_quantile(0.95, 10), 4)
    (6.3138, 2.92, 1.8125)
    """
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must lie in (0, 1), got {p!r}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


@dataclass(frozen=True)
class SeedInterval:
    """A statistic measured once per seed, and the confidence interval for its mean over the seeds (``method`` says
    how the interval was made when it is another estimate's, e.g. a regression slope's)."""

    values: tuple[float, ...]
    seeds: tuple[Any, ...]
    mean: float
    lo: float
    hi: float
    level: float = LEVEL
    method: str = "student-t interval for the mean"

    @property
    def n(self) -> int:
        """How many seeds."""
        return len(self.values)

    def text(self, digits: int = 3) -> str:
        """``mean [lo, hi] (90% CI over n seeds; per seed: …)`` for a claim's ``measured``.

        >>> seed_interval([1.0, 3.0], seeds=[5, 6]).text()
        'mean 2 [-4.31, 8.31] (90% t-interval over 2 seeds; per seed 5: 1, 6: 3)'
        """
        from samkit.experiments.base import fmt

        per = ", ".join(f"{s}: {fmt(v, digits)}" for s, v in zip(self.seeds, self.values))
        return (
            f"mean {fmt(self.mean, digits)} [{fmt(self.lo, digits)}, {fmt(self.hi, digits)}] "
            f"({self.level:.0%} t-interval over {self.n} seed{'s' if self.n != 1 else ''}; per seed {per})"
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (stored in a claim's ``values``)."""
        return {
            "per_seed": {str(s): v for s, v in zip(self.seeds, self.values)},
            "mean": self.mean,
            "lo": self.lo,
            "hi": self.hi,
            "level": self.level,
            "n": self.n,
            "method": self.method,
        }


def seed_interval(
    values: Sequence[float] | Mapping[Any, float], seeds: Sequence[Any] | None = None, level: float = LEVEL
) -> SeedInterval:
    """The ``level`` Student-t confidence interval for the mean of per-seed ``values`` (a list, or seed -> value).

    Every value must be finite (a claim decides what a diverged or missing seed counts as, before calling this):
    a non-finite value raises :class:`ValueError`.

    >>> iv = seed_interval({3: 0.5, 4: 0.7})
    >>> iv.seeds, round(iv.mean, 2), iv.n
    ((3, 4), 0.6, 2)
    >>> seed_interval([1.0]).lo
    -inf
    """
    if isinstance(values, Mapping):
        seeds, vals = list(values.keys()), [float(v) for v in values.values()]
    else:
        vals = [float(v) for v in values]
        seeds = list(seeds) if seeds is not None else list(range(len(vals)))
    if len(seeds) != len(vals):
        raise ValueError(f"{len(vals)} values but {len(seeds)} seeds")
    if not vals:
        raise ValueError("seed_interval needs at least one value")
    bad = [(s, v) for s, v in zip(seeds, vals) if not math.isfinite(v)]
    if bad:
        raise ValueError(f"seed_interval needs finite values, got {bad}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level!r}")
    n = len(vals)
    mean = math.fsum(vals) / n
    if n == 1:
        return SeedInterval(tuple(vals), tuple(seeds), mean, -math.inf, math.inf, level)
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in vals) / (n - 1))
    # values equal to the last bits have no spread: the interval is the point itself
    if sd <= 1e-12 * max(1.0, abs(mean)):
        return SeedInterval(tuple(vals), tuple(seeds), mean, mean, mean, level)
    half = t_quantile(0.5 + level / 2.0, n - 1) * sd / math.sqrt(n)
    return SeedInterval(tuple(vals), tuple(seeds), mean, mean - half, mean + half, level)


def judge(interval: SeedInterval, side: str, threshold: float) -> str:
    """PASS when the whole interval satisfies ``statistic SIDE threshold``, FAIL when none of it does, else
    :data:`INCONCLUSIVE`.

    >>> iv = seed_interval([0.6, 0.7, 0.65])
    >>> judge(iv, "<=", 0.75), judge(iv, ">", 0.75), judge(iv, "<=", 0.66)
    ('PASS', 'FAIL', 'INCONCLUSIVE')
    """
    ok = {
        ">=": lambda x: x >= threshold,
        ">": lambda x: x > threshold,
        "<=": lambda x: x <= threshold,
        "<": lambda x: x < threshold,
    }.get(side)
    if ok is None:
        raise ValueError(f"side must be one of {', '.join(SIDES)}, got {side!r}")
    lo_ok, hi_ok = ok(interval.lo), ok(interval.hi)
    if lo_ok and hi_ok:
        return "PASS"
    if not lo_ok and not hi_ok:
        return "FAIL"
    return INCONCLUSIVE


def all_of(*verdicts: str) -> str:
    """The verdict of a claim made of parts: PASS when every part PASSes, FAIL when one FAILs, else INCONCLUSIVE.

    >>> all_of("PASS", "PASS"), all_of("PASS", "INCONCLUSIVE"), all_of("INCONCLUSIVE", "FAIL")
    ('PASS', 'INCONCLUSIVE', 'FAIL')
    """
    if "FAIL" in verdicts or not verdicts:
        return "FAIL"
    return "PASS" if all(v == "PASS" for v in verdicts) else INCONCLUSIVE
