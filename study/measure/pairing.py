"""Statistics of paired repetitions: the paired speedup and its bootstrap interval.

Each pair is one call of the candidate and one of the SDPA baseline, back to back on the same
buffer (study/measure/timing.py). The paired speedup is the median of the ratios
baseline/candidate over the quieter half of the pairs (`quiet_ratios` says why); its 95%
interval a percentile bootstrap over the pairs, seeded, optionally within groups (the rounds of
a re-timing, study/retime.py).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

CI_LEVEL = 0.95
CI_DRAWS = 2000


def quiet_ratios(cand_us: np.ndarray, base_us: np.ndarray) -> np.ndarray:
    """The ratios baseline/candidate of the quieter half of the pairs (along the last axis).

    A pair's load is how far its slower-to-its-best call is from that side's best: the larger of
    candidate / the candidate's 10th percentile and baseline / the baseline's. A burst of load
    inflates both calls of a pair, but not by one factor when the sides use different numbers
    of threads (two threads wait for the slower one; one thread does not), so pairs measured in
    a burst rank a single-threaded candidate where it would not be on a quiet machine. The
    quieter half (the ceil(n/2) pairs of least load) is what the paired speedup is the median
    of; on a steady machine every pair is as quiet, and it is the median of about half of them.
    """
    c_ref = np.percentile(cand_us, 10, axis=-1, keepdims=True)
    b_ref = np.percentile(base_us, 10, axis=-1, keepdims=True)
    load = np.maximum(cand_us / c_ref, base_us / b_ref)
    keep = (cand_us.shape[-1] + 1) // 2
    order = np.argsort(load, axis=-1, kind="stable")[..., :keep]
    return np.take_along_axis(base_us / cand_us, order, axis=-1)


def _usable(cand_us: Sequence[float], base_us: Sequence[float]) -> tuple[np.ndarray, ...]:
    c = np.asarray(cand_us, dtype=np.float64)
    b = np.asarray(base_us, dtype=np.float64)
    ok = (c > 0) & (b > 0)
    return c[ok], b[ok], ok


def paired_median(cand_us: Sequence[float], base_us: Sequence[float]) -> float:
    """The paired speedup: the median of `quiet_ratios` (nan when no pair was timed)."""
    c, b, _ = _usable(cand_us, base_us)
    return float(np.median(quiet_ratios(c, b))) if c.size else math.nan


def bootstrap_ci(
    cand_us: Sequence[float],
    base_us: Sequence[float],
    groups: Sequence[int] | None = None,
    level: float = CI_LEVEL,
    draws: int = CI_DRAWS,
) -> tuple[float, float]:
    """Percentile bootstrap interval of `paired_median` over the pairs.

    Pairs are resampled with replacement (the quieter half chosen again in every draw); with
    `groups` (one label per pair, e.g. the round a re-timing pair came from) within each group,
    so that every draw keeps the rounds' weights. The generator is seeded: the same pairs give
    the same interval.
    """
    c, b, ok = _usable(cand_us, base_us)
    if c.size == 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(12_345)
    labels = np.zeros(c.size, dtype=np.int64) if groups is None else np.asarray(groups)[ok]
    picks = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        picks.append(members[rng.integers(0, members.size, size=(draws, members.size))])
    index = np.concatenate(picks, axis=1)
    medians = np.median(quiet_ratios(c[index], b[index]), axis=1)
    tail = (1.0 - level) / 2.0 * 100.0
    lo, hi = np.percentile(medians, [tail, 100.0 - tail])
    return (float(lo), float(hi))
