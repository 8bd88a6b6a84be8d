"""The wall-clock checks on known numbers: what is consistent passes, each lie is named.

Each list holds (reported us, wall us) per call, as study/measure/remote.py records them; the
baseline's lists are the honest control (same request path, trusted runner).
"""

from __future__ import annotations

import random

import numpy as np
import pytest

from study.measure import wallcheck
from study.measure.guard import Rejected


def calls(times_us, gap_us, seed=0, jitter_us=0.0):
    rng = random.Random(seed)
    return [(t, t + gap_us + rng.uniform(0, jitter_us)) for t in times_us]


def rejected(candidate, baseline) -> str:
    with pytest.raises(Rejected) as info:
        wallcheck.check(candidate, baseline)
    assert info.value.check == "timing_inconsistent"
    return info.value.detail


def test_honest_times_pass_quiet_and_loaded() -> None:
    times = [1000.0 + 10 * i for i in range(30)]
    wallcheck.check(calls(times, 40), calls(times, 35, seed=1))
    # a loaded machine: long, uneven gaps on both sides
    wallcheck.check(calls(times, 2000, 1, 9000), calls(times, 2000, 2, 9000))
    # short calls whose runner waits for a CPU more often than the baseline's (seen on a
    # 2-core machine at load 12: gaps of 1 ms or 4 ms, the candidate's slow half the time)
    short = [200.0] * 20
    cand = [(t, t + (4000 if i % 2 else 1000)) for i, t in enumerate(short)]
    base = [(t, t + (4000 if i % 10 == 3 else 1000)) for i, t in enumerate(short)]
    wallcheck.check(cand, base)


# Walls recorded beside two other studies on 2 cores (tests/test_postgres.py's three processes):
# an honest plugin (plain SDPA) and the baseline, 12 timed calls each, reported us and the excess
# of the wall over it. The rule before (three times the baseline's spread above its floor)
# pruned it, twice in a row: "446 us more per call ... (allowed 377 us)".
LOADED_CANDIDATE = [9153, 9678, 643, 24757, 1380, 3166, 1162, 15015, 29514, 1849, 3209, 42196]
LOADED_BASELINE = [885, 841, 737, 780, 14035, 6301, 22967, 901, 3633, 837, 656, 737]


def test_honest_walls_recorded_under_load_pass() -> None:
    candidate = [(142.4, 142.4 + gap) for gap in LOADED_CANDIDATE]
    baseline = [(87.0, 87.0 + gap) for gap in LOADED_BASELINE]
    wallcheck.check(candidate, baseline)
    # chance alone puts two floors of that machine up to ~0.7 ms apart: above the 446 us seen
    gap = wallcheck.chance(np.array(LOADED_CANDIDATE, float), np.array(LOADED_BASELINE, float))
    assert 446 < gap < 1000
    lying = [(us / 20, wall) for us, wall in candidate]  # forged: 95% of each call hidden ...
    wallcheck.check(lying, baseline)  # ... 135 us a call: within that machine's noise, unseen
    # beside that much noise a lie must be of its order to be seen: 1 ms a call is not (the
    # shifted floors could be chance), 20 ms is
    wallcheck.check([(us, wall + 1000) for us, wall in candidate], baseline)
    slow = [(us, wall + 20000) for us, wall in candidate]
    assert "more per call" in rejected(slow, baseline)


def test_honest_runners_fail_about_alpha_of_the_checks() -> None:
    """Both sides drawn alike from a loaded machine's excess (most calls ~0.7 ms, a random share
    of them delayed by 1-40 ms): the permutation's quantile bounds how often chance alone
    rejects. 600 fixed seeds: a statistical property, checked deterministically."""
    rejections = 0
    for seed in range(600):
        rng = np.random.default_rng(seed)
        late_share = rng.uniform(0.05, 0.85)
        gaps = [
            rng.normal(700, 80, 12) + (rng.random(12) < late_share) * rng.lognormal(8.5, 1.0, 12)
            for _ in range(2)
        ]
        try:
            wallcheck.check(
                [(100.0, 100.0 + g) for g in gaps[0]], [(90.0, 90.0 + g) for g in gaps[1]]
            )
        except Rejected:
            rejections += 1
    assert rejections <= 600 * wallcheck.ALPHA * 3  # 1.8: at most one, where 0.6 are expected


def test_a_reported_time_beyond_its_wall_is_impossible() -> None:
    honest = calls([500.0] * 10, 40)
    detail = rejected(honest[:4] + [(900.0, 600.0)] + honest[5:], honest)
    assert detail == "timed call 4: reported 900.0 us inside a wall time of 600.0 us"


@pytest.mark.parametrize("factor", [2.0, 10.0, 1000.0])
def test_under_reported_times_are_rejected(factor) -> None:
    """A clock slowed `factor` times, or forged times: the hidden time is in every wall."""
    real = [5000.0 + 50 * i for i in range(20)]
    lying = [(t / factor, t + 40) for t in real]
    detail = rejected(lying, calls(real, 40))
    assert "more per call than the reported median" in detail


def test_the_allowance_grows_with_the_machine_noise_not_with_the_candidate() -> None:
    real = [5000.0] * 20
    lying = [(t / 10, t + 40) for t in real]  # 4500 us hidden per call
    rejected(lying, calls(real, 40))  # on a quiet machine
    noisy = calls(real, 40, 3, 8000)  # the baseline's gaps vary by 8 ms: the lie is within it
    wallcheck.check(lying, noisy)
    # the candidate's own spread buys nothing: only the trusted baseline's counts
    rejected([(us, wall + 3000 * (i % 2)) for i, (us, wall) in enumerate(lying)], calls(real, 40))


def test_small_lies_below_the_floor_pass() -> None:
    """What the wall clock cannot see: under MIN_HIDDEN_US and HIDDEN_FRACTION of the median."""
    real = [1000.0] * 20
    lying = [(t * 0.7, t + 40) for t in real]  # 300 us hidden: < 0.5 x 700
    wallcheck.check(lying, calls(real, 40))


def test_interference_reasons() -> None:
    assert wallcheck.interference(0.001, 1.0, 1.05) is None
    cpu = wallcheck.interference(0.5, 1.0, None)
    assert cpu == "the candidate's processes used 500 ms of CPU while the baseline ran (1000 ms)"
    slow = wallcheck.interference(0.0, 1.0, 1.6, apart=True)
    assert slow == (
        "the baseline took 1.60x as long beside the candidate as with no candidate process alive"
    )
    assert wallcheck.interference(0.0, 1.0, 1.6, apart=False) is None  # a drift, not a slowdown


def test_slowdown_needs_samples_apart() -> None:
    ratio, apart = wallcheck.slowdown([20.0, 21.0, 22.0, 23.0], [10.0, 10.5, 11.0, 11.5])
    assert ratio == pytest.approx(21.5 / 10.75) and apart
    ratio, apart = wallcheck.slowdown([5.0, 30.0, 6.0, 40.0], [10.0, 11.0, 9.0, 12.0])
    assert ratio > 1.3 and not apart
    assert wallcheck.slowdown([], [1.0]) == (None, False)


def test_too_few_calls_to_rule_out_chance_is_its_own_rejection() -> None:
    """Four calls a side (a measurement cut short by its time cap on a loaded machine): no
    relabelling test can rule chance out at ALPHA, so a lie there is TooFewCalls, the harness's
    cue to measure again with more calls, where it is rejected outright."""
    real = [20000.0] * 4
    forged = [(1.0, t + 700) for t in real]  # 20 ms a call hidden
    with pytest.raises(wallcheck.TooFewCalls) as info:
        wallcheck.check(forged, calls(real, 700))
    assert info.value.check == "timing_inconsistent" and "too few" in info.value.detail
    assert not wallcheck.decisive(4, 4) and wallcheck.decisive(11, 11)
    more = [20000.0] * 11
    detail = rejected([(1.0, t + 700) for t in more], calls(more, 700))
    assert "too few" not in detail
    wallcheck.check(calls(real, 700, 1, 50), calls(real, 700, 2, 50))  # honest: passes as before


def test_the_retry_measures_enough_calls_to_decide() -> None:
    """harness.more_reps: a retried wall-clock check gets RETRY_REPS times the repetitions,
    blocks and time, and at least enough calls a side for the check to be decisive."""
    from study.measure import harness

    quick = {"min_reps": 3, "max_reps": 10, "time_cap_s": 0.5, "b2b_blocks": 2, "warmup": 1}
    more = harness.more_reps(quick)
    assert more == quick | {"min_reps": 10, "max_reps": 30, "time_cap_s": 1.5, "b2b_blocks": 6}
    calls = more["min_reps"] + quick["warmup"]
    assert wallcheck.decisive(calls, calls) and wallcheck.decisive(more["b2b_blocks"], calls)
    assert harness.more_reps(quick | {"b2b_blocks": 0})["b2b_blocks"] == 0
