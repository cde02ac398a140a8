"""Uncertainty for every reported number: Wilson intervals for rates, bootstrap intervals for
means, three-state verdicts against a bar, and McNemar's exact test for paired comparisons.

All intervals are two-sided 95% by default; bootstraps resample prompts with a fixed seed, so
the same results give the same intervals.
"""

from __future__ import annotations

import math
from typing import Callable, Literal, Sequence

import numpy as np
from scipy import stats as scipy_stats

Interval = tuple[float, float]
Verdict = Literal["yes", "no", "undecided"]
Z95 = 1.959963984540054


def wilson(successes: int, n: int, z: float = Z95) -> Interval | None:
    """Wilson score interval of a proportion (None for n = 0)."""
    if n <= 0:
        return None
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def rate_interval(flags: Sequence[bool]) -> Interval | None:
    """Wilson interval of the share of True in `flags`."""
    return wilson(int(sum(bool(f) for f in flags)), len(flags))


def bootstrap(values: Sequence[float] | np.ndarray, statistic: Callable[[np.ndarray], float] = np.mean,
              n_boot: int = 2000, seed: int = 0, level: float = 0.95, recentre: bool = False) -> Interval | None:
    """Percentile bootstrap interval of `statistic` over the rows of `values` (resampled with
    replacement). Rows may be tuples (e.g. paired values) when `statistic` reads them so.

    `recentre` shifts the percentiles by the resampling bias (the resamples' mean minus the
    statistic on the data), for statistics that resampling with replacement itself moves: a
    Frechet distance grows when images repeat, so its plain percentiles sit above the estimate."""
    data = np.asarray(values, dtype=float)
    if len(data) < 2:
        return None
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(data), (n_boot, len(data)))
    stats = np.array([statistic(data[i]) for i in idx], dtype=float)
    stats = stats[np.isfinite(stats)]
    if not len(stats):
        return None
    alpha = (1 - level) / 2
    shift = float(stats.mean() - statistic(data)) if recentre else 0.0
    return float(np.quantile(stats, alpha)) - shift, float(np.quantile(stats, 1 - alpha)) - shift


def verdict(interval: Interval | None, bar: float, higher_is_better: bool) -> Verdict:
    """yes when the whole interval is on the good side of the bar, no when it is wholly on the
    bad side, undecided otherwise (or when there is no interval)."""
    if interval is None:
        return "undecided"
    lo, hi = interval
    good, bad = (lo >= bar, hi < bar) if higher_is_better else (hi <= bar, lo > bar)
    return "yes" if good else "no" if bad else "undecided"


def mcnemar(a_only: int, b_only: int) -> float:
    """Exact two-sided McNemar p-value from the discordant pairs: cases where only A showed the
    outcome and cases where only B did (a binomial test of a_only against p = 1/2)."""
    n = a_only + b_only
    if n == 0:
        return 1.0
    return float(scipy_stats.binomtest(a_only, n, 0.5).pvalue)


def fmt_interval(interval: Interval | None, digits: int = 3) -> str:
    return "" if interval is None else f"[{interval[0]:.{digits}f}, {interval[1]:.{digits}f}]"
