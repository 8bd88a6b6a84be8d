"""Timing the candidate cannot rewrite: its reported times against the judge's wall clock.

A candidate's runner reports how long each timed call took, on a clock in the candidate's own
process, which the candidate can rewrite (a patched function, a detour in `clock_gettime`). The
judge measures the wall time around every request on its own clock (study/measure/remote.py),
and so around the baseline's, whose runner is trusted and runs the same request code. Two checks,
each `rejected_by: timing_inconsistent`:

- a reported time longer than the wall time around it (physically impossible: the call ran
  inside that interval), and with it a sum of reported times above the sum of wall times;
- a reported median inconsistent with the wall clock: the time the wall clock sees beyond the
  reported time (IPC, copying the output out, waking the thread pool, scheduling) is compared
  with the same excess of the baseline's requests, interleaved with the candidate's. An honest
  runner's excess is drawn from the baseline's distribution (same request code, same moments
  of the machine); a runner that under-reports shows the hidden time in every call. Each
  side's excess is taken at its floor (`FLOOR_QUANTILE`: a loaded machine adds long delays to
  some calls of either side, never takes time away), and the difference of the floors must
  exceed the larger of `MIN_HIDDEN_US`, `HIDDEN_FRACTION` of the reported median and what
  chance gives: the `1 - ALPHA` quantile of the same difference over `PERMUTATIONS` random
  relabellings of the pooled calls (a permutation test: under honesty the labels are
  exchangeable). The check rejects only what the noise of the machine it runs on cannot
  explain. A lie smaller than that goes unseen: on a quiet machine about half the reported
  time or 100 us per call, on a loaded one up to a few milliseconds. Too few calls cannot rule
  chance out at all (`TooFewCalls`: a measurement cut short by its time cap on a loaded
  machine): the harness then measures again with more. (The rule before, three
  times the baseline's own spread above its floor, pruned 1 honest trial in 30 with 12 calls a
  side beside two other studies on 2 cores: two floors from 12 noisy calls each differ by
  more than one side's spread suggests.)

`interference` decides the flag for load aimed at the baseline's turns: CPU time the candidate's
processes used while the baseline ran (they are stopped then, unless they left the candidate's
process group), or a baseline slower beside the candidate than measured again with no candidate
process alive (`baseline_slowdown`).
"""

from __future__ import annotations

import math

import numpy as np

from study.measure.guard import Rejected

CLOCK_SLACK_US = 1.0  # both clocks are CLOCK_MONOTONIC; a microsecond of rounding
FLOOR_QUANTILE = 0.1  # a side's excess at its best: scheduling delays only ever add
MIN_HIDDEN_US = 100.0
HIDDEN_FRACTION = 0.5
ALPHA = 0.001  # an honest runner fails one check in a thousand, and the retry (harness) again
PERMUTATIONS = 4000
DECISIVE = 4.0  # relabellings per ALPHA needed before chance can be ruled out (`decisive`)
CPU_SHARE = 0.1  # of the baseline's wall time, used by the candidate's processes meanwhile
SLOWDOWN = 1.3  # baseline beside the candidate / baseline with no candidate process alive


def check(candidate: list[tuple[float, float]], baseline: list[tuple[float, float]]) -> None:
    """Raise Rejected("timing_inconsistent") where the candidate's reported times cannot be
    squared with the judge's wall clock. Each list holds (reported us, wall us) per timed call."""
    if not candidate:
        return
    for number, (us, wall) in enumerate(candidate):
        if us > wall + CLOCK_SLACK_US:
            raise Rejected(
                "timing_inconsistent",
                f"timed call {number}: reported {us:.1f} us inside a wall time of {wall:.1f} us",
            )
    reported = np.array([us for us, _ in candidate])
    if reported.sum() > sum(wall for _, wall in candidate) + CLOCK_SLACK_US:
        raise Rejected("timing_inconsistent", "the reported times add up to more than the wall")
    if not baseline:
        return
    excess_c = np.array([wall - us for us, wall in candidate])
    excess_b = np.array([wall - us for us, wall in baseline])
    hidden = float(_floor(excess_c) - _floor(excess_b))
    median = float(np.median(reported))
    allowed = max(MIN_HIDDEN_US, HIDDEN_FRACTION * median)
    if hidden <= allowed:
        return
    if not decisive(len(excess_c), len(excess_b)):
        raise TooFewCalls(
            "timing_inconsistent",
            f"the judge's wall clock sees {hidden:.0f} us more per call than the reported median "
            f"of {median:.1f} us accounts for, and {len(excess_c)} calls against the baseline's "
            f"{len(excess_b)} are too few to tell that from chance",
        )
    allowed = max(allowed, chance(excess_c, excess_b))
    if hidden > allowed:
        raise Rejected(
            "timing_inconsistent",
            f"the judge's wall clock sees {hidden:.0f} us more per call than the reported median "
            f"of {median:.1f} us accounts for (allowed {allowed:.0f} us, from the baseline's "
            "requests)",
        )


class TooFewCalls(Rejected):
    """Hidden time above the fixed allowance, in too few calls for the permutation to tell it
    from chance (4 calls a side: 70 ways to split them, the most extreme one 1.4% likely). A
    rejection where nothing more is measured; the harness measures again with more calls."""


def decisive(calls: int, baseline_calls: int) -> bool:
    """Whether so many calls can show a difference at ALPHA: the most extreme relabelling (all
    of the largest excesses on the candidate's side) is at most a quarter of ALPHA likely."""
    return math.comb(calls + baseline_calls, calls) * ALPHA >= DECISIVE


def _floor(excess: np.ndarray) -> np.ndarray:
    return np.quantile(excess, FLOOR_QUANTILE, axis=-1)


def chance(excess_c: np.ndarray, excess_b: np.ndarray) -> float:
    """The `1 - ALPHA` quantile of floor(candidate) - floor(baseline) with the calls' labels
    drawn at random from the pooled calls: how far apart the two floors lie by chance alone.
    Seeded: the same walls give the same verdict."""
    pooled = np.concatenate([excess_c, excess_b])
    rng = np.random.default_rng(len(excess_c) * 1_000_003 + len(excess_b))
    shuffled = rng.permuted(np.broadcast_to(pooled, (PERMUTATIONS, pooled.size)), axis=1)
    split = len(excess_c)
    gaps = _floor(shuffled[:, :split]) - _floor(shuffled[:, split:])
    return float(np.quantile(gaps, 1.0 - ALPHA))


def slowdown(beside: list[float], alone: list[float]) -> tuple[float | None, bool]:
    """The baseline's median beside the candidate over its median with no candidate process
    alive, and whether the two samples are apart (beside's first quartile above alone's third):
    a ratio of two medians taken a few seconds apart on a loaded machine drifts by itself."""
    if not beside or not alone:
        return None, False
    ratio = float(np.median(beside) / np.median(alone))
    return ratio, bool(np.quantile(beside, 0.25) > np.quantile(alone, 0.75))


def interference(
    cpu_s: float, baseline_wall_s: float, slowdown: float | None, apart: bool = True
) -> str | None:
    """The flag's reason, or None: see the module docstring."""
    reasons = []
    if baseline_wall_s > 0 and cpu_s > max(CPU_SHARE * baseline_wall_s, 0.005):
        reasons.append(
            f"the candidate's processes used {cpu_s * 1e3:.0f} ms of CPU while the baseline ran "
            f"({baseline_wall_s * 1e3:.0f} ms)"
        )
    if slowdown is not None and slowdown > SLOWDOWN and apart:
        reasons.append(
            f"the baseline took {slowdown:.2f}x as long beside the candidate as with no "
            "candidate process alive"
        )
    return "; ".join(reasons) or None
