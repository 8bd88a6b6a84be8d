"""Paired timing on the CPU with calls of known length (sleeps): statistics, pairing, stopping.

A sleep lasts at least what it asks for, so the lower bounds below are exact; the upper bounds
leave room for a loaded machine.
"""

from __future__ import annotations

import time

import pytest
import torch

from kernels import Problem
from study.measure import timing

PROBLEM = Problem(batch=1, heads_q=2, heads_kv=2, seq_q=8, seq_kv=8, head_dim=16, dtype="float32")
BENCH = {"warmup": 2, "min_reps": 6, "max_reps": 40, "target_spread": 1e9, "time_cap_s": 60.0}


def sleeper(seconds: float, log: list[str] | None = None, side: str = ""):
    def run(q, k, v):
        if log is not None:
            log.append(side)
        time.sleep(seconds)
        return q + 1

    return run


def buffers(count: int) -> list[tuple[torch.Tensor, ...]]:
    return [tuple(torch.randn(PROBLEM.q_shape()) for _ in range(3)) for _ in range(count)]


def test_stats_of_known_samples() -> None:
    stats = timing.Stats.of([5.0, 1.0, 4.0, 2.0, 3.0])
    assert (stats.median_us, stats.iqr_us, stats.reps, stats.min_us) == (3.0, 2.0, 5, 1.0)
    assert stats.spread == pytest.approx(2.0 / 3.0)
    assert timing.Stats.of([0.0, 0.0]).spread == float("inf")


def test_time_call_measures_a_known_sleep() -> None:
    timer = timing.Timer(PROBLEM, cold_cache=True)
    us, out = timer.time_call(sleeper(0.003), buffers(1)[0])
    assert 3000 <= us < 300_000
    assert isinstance(out, torch.Tensor)
    assert timer.flush_buffer is None  # no L2 flush on the CPU, whatever bench.cache says


def test_cache_mode() -> None:
    gpu = Problem(batch=1, heads_q=2, heads_kv=2, seq_q=8, seq_kv=8, head_dim=16, device="cuda")
    assert not timing.cold_cache({}, PROBLEM) and timing.cold_cache({}, gpu)
    assert timing.cold_cache({"cache": "cold"}, PROBLEM)
    assert not timing.cold_cache({"cache": "hot"}, gpu)


def test_pair_times_both_sides_interleaved_on_rotating_buffers() -> None:
    log: list[str] = []
    seen: list[tuple[int, int]] = []  # (rep, buffer) before each repetition
    outputs: list[int] = []  # the buffer of each timed candidate output
    inputs = buffers(3)
    pair = timing.measure_pair(
        PROBLEM,
        sleeper(0.004, log, "c"),
        sleeper(0.001, log, "b"),
        inputs,
        BENCH,
        on_output=lambda index, out: outputs.append(index),
        before_rep=lambda rep, index: seen.append((rep, index)),
    )
    reps = BENCH["min_reps"]  # target_spread is met at once: the fewest repetitions
    assert pair.candidate.reps == pair.baseline.reps == len(pair.ratios) == reps
    warmup = BENCH["warmup"] * len(inputs)
    assert log[: 2 * warmup] == ["c", "b"] * warmup
    timed = log[2 * warmup :]
    assert timed == [s for rep in range(reps) for s in (("c", "b") if rep % 2 == 0 else ("b", "c"))]
    assert seen == [(rep, rep % 3) for rep in range(reps)]
    assert outputs == [rep % 3 for rep in range(reps)]
    assert pair.candidate.min_us >= 4000 and pair.baseline.min_us >= 1000
    assert pair.candidate.median_us > pair.baseline.median_us
    assert pair.speedup == pair.baseline.median_us / pair.candidate.median_us < 1
    assert pair.paired_speedup < 1
    assert pair.wall_s >= reps * 0.005


@pytest.mark.parametrize(
    ("target", "cap", "expected"),
    [(1e9, 60.0, 6), (0.0, 0.0, 6), (0.0, 60.0, 12)],
)
def test_repetitions_stop_at_the_spread_the_cap_or_max_reps(target, cap, expected) -> None:
    """target_spread 0 is never met: the time cap (0 s: at min_reps) or max_reps ends it."""
    bench = BENCH | {"target_spread": target, "time_cap_s": cap, "max_reps": 12, "warmup": 0}
    pair = timing.measure_pair(PROBLEM, sleeper(0), sleeper(0), buffers(2), bench)
    assert pair.candidate.reps == pair.baseline.reps == expected


def test_time_in_hooks_does_not_count_against_the_cap() -> None:
    bench = BENCH | {"target_spread": 0.0, "time_cap_s": 0.1, "max_reps": 8, "warmup": 0}
    pair = timing.measure_pair(
        PROBLEM,
        sleeper(0),
        sleeper(0),
        buffers(1),
        bench,
        before_rep=lambda rep, i: time.sleep(0.05),
    )
    assert pair.candidate.reps == 8  # 8 x 50 ms in hooks, far past the 100 ms cap
