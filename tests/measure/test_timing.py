"""Paired timing on the CPU with calls of known length (sleeps): statistics, pairing, stopping.

A sleep lasts at least what it asks for, so the lower bounds below are exact; the upper bounds
leave room for a loaded machine.
"""

from __future__ import annotations

import time

import pytest
import torch

from kernels import Problem
from study.measure import pairing, timing

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


class InstantTimer:
    """A clock that reads 1 us per call and spends nothing: only the hooks take real time."""

    def time_call(self, fn, args):
        return 1.0, fn(*args)


def test_time_in_hooks_does_not_count_against_the_cap() -> None:
    bench = BENCH | {"target_spread": 0.0, "time_cap_s": 0.2, "max_reps": 8, "warmup": 0}
    pair = timing.measure_pair(
        PROBLEM,
        lambda q, k, v: q,
        lambda q, k, v: q,
        buffers(1),
        bench,
        before_rep=lambda rep, i: time.sleep(0.1),
        timer=InstantTimer(),  # type: ignore[arg-type]
    )
    assert pair.candidate.reps == 8  # 8 x 100 ms in hooks, far past the 200 ms cap
    bench = bench | {"time_cap_s": 0.0}  # the cap itself still ends the repetitions
    assert (
        timing.measure_pair(PROBLEM, *([lambda q, k, v: q] * 2), buffers(1), bench).candidate.reps
        == 6
    )


def test_paired_speedup_is_the_median_over_the_quieter_half_of_the_pairs() -> None:
    """Six of ten pairs ran in a burst that slowed the candidate 2x and SDPA 4x (two threads
    wait for the slower one): the median of all ratios says 2.4x, the quiet pairs 1.2x."""
    cand = [1.0] * 4 + [2.0] * 6
    base = [1.2] * 4 + [4.8] * 6
    assert pairing.paired_median(cand, base) == 1.2
    assert sorted(b / c for c, b in zip(cand, base, strict=True))[5] == 2.4
    # drift that scales both sides alike leaves every ratio, hence the median, as it was
    drift = [1.0, 3.0, 1.5, 2.0, 1.0, 4.0, 1.2, 1.0]
    cand = [100.0 * d for d in drift]
    base = [130.0 * d for d in drift]
    assert pairing.paired_median(cand, base) == pytest.approx(1.3)
    assert pairing.bootstrap_ci(cand, base) == pytest.approx((1.3, 1.3))
    assert all(v != v for v in pairing.bootstrap_ci([], []))  # nan: nothing measured


def test_bootstrap_interval_is_seeded_brackets_and_narrows() -> None:
    gen = torch.Generator().manual_seed(0)
    cand = (100.0 * torch.exp(0.1 * torch.randn(400, generator=gen))).tolist()
    base = (130.0 * torch.exp(0.1 * torch.randn(400, generator=gen))).tolist()
    narrow = pairing.bootstrap_ci(cand, base)
    wide = pairing.bootstrap_ci(cand[:20], base[:20])
    assert narrow == pairing.bootstrap_ci(cand, base)  # seeded
    assert narrow[0] < 1.3 < narrow[1] and wide[1] - wide[0] > narrow[1] - narrow[0]
    # resampled within rounds: as seeded, and every draw keeps both rounds' sizes
    rounds = [0] * 200 + [1] * 200
    assert pairing.bootstrap_ci(cand, base, rounds) == pairing.bootstrap_ci(cand, base, rounds)
    assert pairing.bootstrap_ci(cand, base, rounds)[0] < 1.3 < narrow[1]


def test_back_to_back_blocks_follow_the_repetitions() -> None:
    log: list[str] = []
    seen: list[tuple[int, int]] = []
    outputs: list[int] = []
    bench = BENCH | {"b2b_blocks": 2, "warmup": 0}
    pair = timing.measure_pair(
        PROBLEM,
        sleeper(0.004, log, "c"),
        sleeper(0.001, log, "b"),
        buffers(3),
        bench,
        on_output=lambda index, out: outputs.append(index),
        before_rep=lambda rep, index: seen.append((rep, index)),
    )
    reps = BENCH["min_reps"]
    calls = timing.BLOCK_CALLS[0]  # a 4 ms call is longer than a block's 2 ms target
    assert pair.block_calls == calls and len(pair.block_cand_us) == len(pair.block_base_us) == 2
    assert log[2 * reps :] == ["c"] * calls + ["b"] * calls + ["b"] * calls + ["c"] * calls
    assert seen[reps:] == [(reps, reps % 3), (reps + 1, (reps + 1) % 3)]
    assert outputs[reps:] == [reps % 3, (reps + 1) % 3]  # each candidate block's last output
    assert min(pair.block_cand_us) >= 4000 and min(pair.block_base_us) >= 1000
    fields = pair.fields()
    assert fields["b2b_calls"] == calls and fields["timing"] == "per_call"
    assert fields["b2b_speedup"] < 1 and len(fields["blocks_us"]) == 2
    assert len(fields["pairs_us"]) == reps and fields["paired_speedup"] < 1


def test_value_timing_per_problem() -> None:
    small = Problem(1, 8, 8, 512, 512, 64, dtype="float16", device="cuda")
    prefill = Problem(1, 32, 8, 4096, 4096, 128, dtype="bfloat16", causal=True, device="cuda")
    assert timing.value_timing({}, small) == "back_to_back"
    assert timing.value_timing({}, prefill) == "per_call"
    assert timing.value_timing({}, PROBLEM) == "per_call"  # the CPU: per call, pool woken
    assert timing.value_timing({"timing": "back_to_back"}, PROBLEM) == "back_to_back"


def test_the_order_of_a_pair_is_measured() -> None:
    """A clock on which the baseline is 3x slower right after the candidate than after itself."""

    class OrderTimer:
        last = ""

        def time_call(self, fn, args):
            side = fn(*args)
            us = 100.0 if side == "c" else (300.0 if self.last == "c" else 100.0)
            self.last = side
            return us, side

    pair = timing.measure_pair(
        PROBLEM, lambda *a: "c", lambda *a: "b", buffers(2), BENCH, timer=OrderTimer()
    )
    assert pair.fields()["baseline_order_ratio"] == 3.0


def test_the_wake_touches_every_pool_thread() -> None:
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        timer = timing.Timer(PROBLEM, cold_cache=False)
        assert timer.wake_buffer is not None
        assert timer.wake_buffer.numel() == 2 * timing.WAKE_BYTES_PER_THREAD
        timer.wake()
        assert int(timer.wake_buffer.min()) == int(timer.wake_buffer.max()) == 1
        torch.set_num_threads(1)
        assert timing.Timer(PROBLEM, cold_cache=False).wake_buffer is None
    finally:
        torch.set_num_threads(before)


class Elsewhere:
    """A side timed where it runs (another process in the judge): it reports its own time."""

    times_itself = True

    def __init__(self, us: float) -> None:
        self.us = us
        self.calls = 0

    def __call__(self, q, k, v) -> None:  # warm-up
        self.calls += 1

    def timed_call(self, q, k, v) -> timing.Reported:
        self.calls += 1
        return timing.Reported(self.us, q + 1)

    def timed_block(self, q, k, v, calls: int) -> timing.Reported:
        self.calls += calls
        return timing.Reported(self.us / 2, q + 2)


def test_a_side_that_times_itself_is_taken_at_its_word_here() -> None:
    """measure_pair takes the reported time (the judge checks it against its wall clock in
    study/measure/wallcheck.py); the local side is timed as before."""
    remote = Elsewhere(123.0)
    pair = timing.measure_pair(PROBLEM, remote, sleeper(0.001), buffers(2), BENCH)
    assert pair.candidate.median_us == pair.candidate.min_us == 123.0
    assert pair.baseline.min_us >= 1000
    assert remote.calls == BENCH["warmup"] * 2 + pair.candidate.reps
    # back-to-back blocks too: the reported per-call time, its block's calls run there
    bench = BENCH | {"b2b_blocks": 2}
    remote = Elsewhere(123.0)
    pair = timing.measure_pair(PROBLEM, remote, sleeper(0.001), buffers(2), bench)
    assert pair.block_cand_us == [61.5, 61.5] and min(pair.block_base_us) >= 1000
    assert remote.calls == BENCH["warmup"] * 2 + pair.candidate.reps + 2 * pair.block_calls
