"""Paired timing: candidate and SDPA baseline interleaved, the same inputs, the same mode.

Per call (the main measurement): GPU: CUDA events around each call, the L2 cache flushed (a
256 MiB write) before each repetition unless `bench.cache=hot`. CPU: `perf_counter_ns` around
each call, the intra-op thread pool woken first (below). Both: warm-up calls, inputs rotated
among several buffers, the order of the pair alternated, repetitions until the relative IQR of
both sides is under `target_spread` or a time cap. Each repetition is one pair (candidate and
baseline back to back on the same buffer); the ratio baseline/candidate of a pair cancels the
machine's drift (neighbours, clocks, thermals, which card), so the study ranks by the median of
those ratios over the quieter half of the pairs (`paired_speedup`, `quiet_ratios` says why) and
keeps a bootstrap interval of it (`speedup_ci`).

The order effect. On the CPU the intra-op pool parks its threads when it has been idle for a
moment (after a single-threaded candidate, the harness's checks, a no-op cheat), and the first
parallel region after that pays for waking them: what ran before a call changed that call's
time (reported on a 2-core machine: SDPA 0.7 ms after SDPA, 3.4 ms after a no-op).
`Timer.wake` runs one tiny parallel op on every pool thread right before each timed call of
either side, outside the timed region, so that both sides start with a running pool (as inside
a model, where the calls before attention are parallel ops too). `baseline_order_ratio` keeps
checking it: the baseline's median when it follows the candidate over its median when it
follows itself (bench/noise_robustness.py measures the effect with and without the wake).

Back to back (`bench.b2b_blocks` blocks per side, after the repetitions): blocks of calls on
one buffer with no flush and no hook between them, timed as one, per call = block / calls; what
a model calling attention in a loop sees, including host launch overhead that the flushed
per-call timing hides on a GPU. The buffer is refilled (the `before_rep` hook) before each block
pair and the candidate block's last output is spot-checked; inside a block the inputs repeat,
so a candidate that memoised its answers would gain there only (the report flags a back-to-back
speedup above twice the per-call one). The value
of a trial uses one of the two (`value_timing`): back to back on a GPU for a launch-bound
problem (little work per call), per call everywhere else; `bench.timing` overrides it.

The flush first resets persisting L2 lines to normal: `l2=kv`'s window makes K and V persist, an
ordinary write does not evict those, and they would stay warm for the next call (the baseline's
too) while everything else starts cold.

The judge (study/measure/harness.py) runs `measure_pair` with two sides that run in other
processes (study/measure/remote.py): such a side times its call where it runs and says so with
`times_itself`; `Timer.time_call` and `Timer.time_block` then take the `Reported` time it
returns (the judge flushes the cache before a call, the runner wakes its own thread pool right
before it; the judge checks the time against its own wall clock, study/measure/wallcheck.py).
In a runner process, `Timer` times the call itself. The clocks are private references taken
when this module is imported, before any candidate or plugin code runs: a candidate that
replaces `time.perf_counter_ns` or `torch.cuda.Event` does not change what is measured, and the
guard (study/measure/guard.py) notices the replacement.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from kernels import Problem
from kernels.mutations import POOL_GRAIN_BYTES, persisting_reset
from study.measure.pairing import bootstrap_ci, paired_median

FLUSH_BYTES = 256 * 1024 * 1024
WAKE_BYTES_PER_THREAD = POOL_GRAIN_BYTES  # one chunk of the wake op per pool thread
BLOCK_TARGET_US = 2000.0  # a back-to-back block lasts about this long ...
BLOCK_CALLS = (2, 64)  # ... within this many calls
# A GPU problem is launch-bound (value: back to back) below both of these: about 50 us of work
# on an H100/H200, where a few microseconds of launch overhead per kernel matter.
LAUNCH_BOUND_FLOPS = 5e10
LAUNCH_BOUND_BYTES = 256 * 1024 * 1024
TIMINGS = ("auto", "per_call", "back_to_back")

# Private references, captured at import (the worker imports this before any plugin).
_perf_counter_ns = time.perf_counter_ns
_perf_counter = time.perf_counter
_monotonic_ns = time.monotonic_ns
_CudaEvent = torch.cuda.Event
_cuda_synchronize = torch.cuda.synchronize


@dataclass
class Reported:
    """A call timed where it ran (another process): its microseconds and its result."""

    us: float
    value: Any


@dataclass
class Stats:
    """Latency statistics of one side, in microseconds."""

    median_us: float
    iqr_us: float
    reps: int
    min_us: float

    @classmethod
    def of(cls, samples_us: list[float]) -> Stats:
        arr = np.asarray(samples_us, dtype=np.float64)
        q25, q50, q75 = np.percentile(arr, [25, 50, 75])
        return cls(float(q50), float(q75 - q25), int(arr.size), float(arr.min()))

    @property
    def spread(self) -> float:
        return self.iqr_us / self.median_us if self.median_us > 0 else float("inf")


class Timer:
    """Times one call, or a block of calls, on the problem's device."""

    def __init__(self, problem: Problem, cold_cache: bool) -> None:
        self.cuda = problem.is_cuda
        self.device = problem.device
        self.flush_buffer = (
            torch.empty(FLUSH_BYTES, dtype=torch.uint8, device=self.device)
            if self.cuda and cold_cache
            else None
        )
        # None where no line can persist (CPU, no cuda-python, no carve-out)
        self.reset_l2 = persisting_reset(self.device) if self.flush_buffer is not None else None
        threads = torch.get_num_threads()
        self.wake_buffer = (
            torch.empty(WAKE_BYTES_PER_THREAD * threads, dtype=torch.uint8)
            if not self.cuda and threads > 1
            else None
        )

    def flush(self) -> None:
        """Evict L2. The reset of persisting lines is not stream-ordered: it runs here, after the
        timed call that may have made them has completed (each timed call ends synchronized)."""
        if self.reset_l2 is not None:
            self.reset_l2()
        if self.flush_buffer is not None:
            self.flush_buffer.zero_()

    def wake(self) -> None:
        """One chunk of a parallel fill per pool thread: the pool is running when a call starts."""
        if self.wake_buffer is not None:
            self.wake_buffer.fill_(1)

    def time_call(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> tuple[float, Any]:
        """Microseconds of one call, and its result."""
        self.flush()
        if getattr(fn, "times_itself", False):
            reported = fn.timed_call(*args)
            return reported.us, reported.value
        if self.cuda:
            start = _CudaEvent(enable_timing=True)
            end = _CudaEvent(enable_timing=True)
            start.record()
            out = fn(*args)
            end.record()
            end.synchronize()
            return start.elapsed_time(end) * 1e3, out
        self.wake()
        t0 = _perf_counter_ns()
        out = fn(*args)
        t1 = _perf_counter_ns()
        return (t1 - t0) / 1e3, out

    def time_block(
        self, fn: Callable[..., Any], args: tuple[Any, ...], calls: int
    ) -> tuple[float, Any]:
        """Microseconds per call of `calls` calls back to back on one buffer, and the last
        call's result. No flush and no hook between the calls (one buffer: a mutation that
        reuses output memory per buffer overwrites only that buffer's output). A side that
        `times_itself` runs the block where it lives and reports its per-call time."""
        if getattr(fn, "times_itself", False):
            reported = fn.timed_block(*args, calls=calls)
            return reported.us, reported.value
        out = None
        if self.cuda:
            start = _CudaEvent(enable_timing=True)
            end = _CudaEvent(enable_timing=True)
            start.record()
            for _ in range(calls):
                out = fn(*args)
            end.record()
            end.synchronize()
            return start.elapsed_time(end) * 1e3 / calls, out
        self.wake()
        t0 = _perf_counter_ns()
        for _ in range(calls):
            out = fn(*args)
        t1 = _perf_counter_ns()
        return (t1 - t0) / 1e3 / calls, out


def cold_cache(bench: dict[str, Any], problem: Problem) -> bool:
    mode = bench.get("cache", "auto")
    return mode == "cold" or (mode == "auto" and problem.is_cuda)


def launch_bound(problem: Problem) -> bool:
    """Little enough work per call that launch overhead is a visible share of it (GPU)."""
    return problem.flops() < LAUNCH_BOUND_FLOPS and problem.min_bytes() < LAUNCH_BOUND_BYTES


def value_timing(bench: dict[str, Any], problem: Problem) -> str:
    """Which timing a trial's value uses: `per_call` or `back_to_back` (see the docstring)."""
    mode = str(bench.get("timing", "auto"))
    if mode != "auto":
        return mode
    return "back_to_back" if problem.is_cuda and launch_bound(problem) else "per_call"


def _ratios(base_us: Sequence[float], cand_us: Sequence[float]) -> list[float]:
    return [b / c for b, c in zip(base_us, cand_us, strict=True) if c > 0]


def _order_ratio(base_us: list[float], first: list[int]) -> float:
    """Baseline median when it followed the candidate over its median when it followed itself.

    In a repetition whose pair starts with the candidate (`first[i] == 0`) the baseline follows
    the candidate; in one that starts with the baseline, the previous repetition ended with the
    baseline (orders alternate), so the baseline follows itself (the first repetition aside).
    """
    after_cand = [b for b, f in zip(base_us, first, strict=True) if f == 0]
    after_base = [b for i, (b, f) in enumerate(zip(base_us, first, strict=True)) if f == 1 and i]
    if not after_cand or not after_base:
        return math.nan
    return float(np.median(after_cand) / np.median(after_base))


@dataclass
class Pair:
    """Both sides of a paired measurement.

    `speedup` is the ratio of the medians, baseline median / candidate median (the contract's
    `speedup` = `baseline_latency_us / latency_us`); `paired_speedup` is the median of the
    per-repetition ratios baseline/candidate of calls made back to back on the same buffer
    (over the quieter half of the pairs: `quiet_ratios`), which cancels slow drift (clocks,
    thermals, neighbours) that a ratio of medians does not.
    The two agree when the machine is steady; a gap between them is itself a warning.
    `cand_us`/`base_us` are the raw repetitions, pair by pair; `block_*` the back-to-back
    blocks' per-call times, pair by pair (empty when none were timed).
    """

    candidate: Stats
    baseline: Stats
    ratios: list[float]
    wall_s: float
    cand_us: list[float] = field(default_factory=list)
    base_us: list[float] = field(default_factory=list)
    first: list[int] = field(default_factory=list)  # per repetition: 0 candidate first, 1 baseline
    block_cand_us: list[float] = field(default_factory=list)
    block_base_us: list[float] = field(default_factory=list)
    block_calls: int = 0
    timing: str = "per_call"

    @property
    def speedup(self) -> float:
        return self.baseline.median_us / self.candidate.median_us

    @property
    def paired_speedup(self) -> float:
        return paired_median(self.cand_us, self.base_us)

    def fields(self) -> dict[str, Any]:
        """The timing figures a result carries (plain types: they cross a pipe)."""
        cand, base = self.candidate, self.baseline
        out: dict[str, Any] = {
            "latency_us": cand.median_us,
            "latency_iqr_us": cand.iqr_us,
            "latency_min_us": cand.min_us,
            "reps": cand.reps,
            "baseline_latency_us": base.median_us,
            "baseline_latency_iqr_us": base.iqr_us,
            "baseline_latency_min_us": base.min_us,
            "speedup": self.speedup,
            "paired_speedup": self.paired_speedup,
            "speedup_ci": list(bootstrap_ci(self.cand_us, self.base_us)),
            "baseline_order_ratio": _order_ratio(self.base_us, self.first),
            "timing": self.timing,
            "pairs_us": [[c, b] for c, b in zip(self.cand_us, self.base_us, strict=True)],
        }
        if self.block_cand_us:
            out.update(
                latency_b2b_us=float(np.median(self.block_cand_us)),
                baseline_latency_b2b_us=float(np.median(self.block_base_us)),
                baseline_latency_b2b_min_us=float(np.min(self.block_base_us)),
                b2b_speedup=paired_median(self.block_cand_us, self.block_base_us),
                b2b_speedup_ci=list(bootstrap_ci(self.block_cand_us, self.block_base_us)),
                b2b_calls=self.block_calls,
                blocks_us=[
                    [c, b] for c, b in zip(self.block_cand_us, self.block_base_us, strict=True)
                ],
            )
        return out


def chosen(result: dict[str, Any]) -> tuple[float, list[float]]:
    """(paired speedup, its 95% interval) in the timing the value uses (`result["timing"]`)."""
    if result.get("timing") == "back_to_back" and "b2b_speedup" in result:
        return float(result["b2b_speedup"]), list(result["b2b_speedup_ci"])
    ci = result.get("speedup_ci") or [math.nan, math.nan]
    return float(result["paired_speedup"]), list(ci)


def reference_figure(result: dict[str, Any]) -> float:
    """The baseline's fastest repetition in the timing the value uses.

    A study's reference is taken from its first trial's (study/objective.py): the least loaded
    moment of that trial, so that the value is close to the candidate's latency on a quiet
    machine.
    """
    if result.get("timing") == "back_to_back" and "b2b_speedup" in result:
        return float(result["baseline_latency_b2b_min_us"])
    return float(result["baseline_latency_min_us"])


def measure_pair(
    problem: Problem,
    candidate: Callable[..., Any],
    baseline: Callable[..., Any],
    buffers: list[tuple[torch.Tensor, ...]],
    bench: dict[str, Any],
    on_output: Callable[[int, Any], None] | None = None,
    before_rep: Callable[[int, int], None] | None = None,
    timer: Timer | None = None,
) -> Pair:
    """Interleave candidate and baseline calls; return both sides' statistics.

    `on_output(buffer_index, out)` sees the candidate's output of every timed call right after
    it returned (outside the timed region), so that the caller can spot-check what was timed and
    check that nothing global changed before the baseline runs next. `before_rep(rep, index)`
    runs before each repetition (outside the timed region), e.g. to refill the buffer in place;
    a back-to-back block pair counts as one repetition (its candidate block's last output is the
    one `on_output` sees). Warm-up calls run on every buffer first. `timer`: the clock (tests
    pass a synthetic one).
    """
    timer = timer or Timer(problem, cold_cache(bench, problem))
    for _ in range(int(bench["warmup"])):
        for args in buffers:
            candidate(*args)
            baseline(*args)
    if problem.is_cuda:
        _cuda_synchronize(problem.device)
    cand_us: list[float] = []
    base_us: list[float] = []
    first: list[int] = []
    min_reps, max_reps = int(bench["min_reps"]), int(bench["max_reps"])
    target, cap = float(bench["target_spread"]), float(bench["time_cap_s"])
    started = _perf_counter()
    hooks_s = [0.0]  # time spent in the caller's hooks does not count against the cap

    def hook(fn: Callable[..., None] | None, *args: Any) -> None:
        if fn is not None:
            hook_started = _perf_counter()
            fn(*args)
            hooks_s[0] += _perf_counter() - hook_started

    rep = 0
    while rep < max_reps:
        index = rep % len(buffers)
        hook(before_rep, rep, index)
        args = buffers[index]
        order = (0, 1) if rep % 2 == 0 else (1, 0)
        first.append(order[0])
        for side in order:
            if side == 0:
                us, out = timer.time_call(candidate, args)
                cand_us.append(us)
                hook(on_output, index, out)
                del out
            else:
                us, out = timer.time_call(baseline, args)
                base_us.append(us)
                del out
        rep += 1
        if rep >= min_reps:
            if _perf_counter() - started - hooks_s[0] > cap:
                break
            if Stats.of(cand_us).spread < target and Stats.of(base_us).spread < target:
                break
    mode = value_timing(bench, problem)
    blocks = int(bench.get("b2b_blocks", 0))
    if mode == "back_to_back":
        blocks = max(blocks, min_reps)
    per_call = max(float(np.median(cand_us)), float(np.median(base_us)), 1e-3)
    calls = int(min(max(round(BLOCK_TARGET_US / per_call), BLOCK_CALLS[0]), BLOCK_CALLS[1]))
    block_cand: list[float] = []
    block_base: list[float] = []
    for block in range(blocks):
        index = (rep + block) % len(buffers)
        hook(before_rep, rep + block, index)
        for side in (0, 1) if block % 2 == 0 else (1, 0):
            if side == 0:
                us, out = timer.time_block(candidate, buffers[index], calls)
                block_cand.append(us)
                hook(on_output, index, out)
                del out
            else:
                us, out = timer.time_block(baseline, buffers[index], calls)
                block_base.append(us)
                del out
    return Pair(
        Stats.of(cand_us),
        Stats.of(base_us),
        _ratios(base_us, cand_us),
        _perf_counter() - started,
        cand_us,
        base_us,
        first,
        block_cand,
        block_base,
        calls if blocks else 0,
        mode,
    )
