"""Paired timing: candidate and SDPA baseline interleaved, the same inputs, the same mode.

GPU: CUDA events around each call, the L2 cache flushed (a 256 MiB write) before each repetition
unless `bench.cache=hot`. CPU: `perf_counter_ns` around each call. Both: warm-up calls, inputs
rotated among several buffers, the order of the pair alternated (drift and warm-cache effects hit
both sides equally), repetitions until the relative IQR of both sides is under `target_spread` or
a time cap; median and IQR kept, and the per-repetition ratio baseline/candidate of each pair.

The flush first resets persisting L2 lines to normal: `l2=kv`'s window makes K and V persist, an
ordinary write does not evict those, and they would stay warm for the next call (the baseline's
too) while everything else starts cold.

The clocks are private references taken when this module is imported, before any candidate or
plugin code runs: a candidate that replaces `time.perf_counter_ns` or `torch.cuda.Event` does not
change what is measured, and the guard (study/measure/guard.py) notices the replacement.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from kernels import Problem
from kernels.mutations import persisting_reset

FLUSH_BYTES = 256 * 1024 * 1024

# Private references, captured at import (the worker imports this before any plugin).
_perf_counter_ns = time.perf_counter_ns
_perf_counter = time.perf_counter
_monotonic_ns = time.monotonic_ns
_CudaEvent = torch.cuda.Event
_cuda_synchronize = torch.cuda.synchronize


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
    """Times one call on the problem's device."""

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

    def flush(self) -> None:
        """Evict L2. The reset of persisting lines is not stream-ordered: it runs here, after the
        timed call that may have made them has completed (each timed call ends synchronized)."""
        if self.reset_l2 is not None:
            self.reset_l2()
        if self.flush_buffer is not None:
            self.flush_buffer.zero_()

    def time_call(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> tuple[float, Any]:
        """Microseconds of one call, and its result."""
        self.flush()
        if self.cuda:
            start = _CudaEvent(enable_timing=True)
            end = _CudaEvent(enable_timing=True)
            start.record()
            out = fn(*args)
            end.record()
            end.synchronize()
            return start.elapsed_time(end) * 1e3, out
        t0 = _perf_counter_ns()
        out = fn(*args)
        t1 = _perf_counter_ns()
        return (t1 - t0) / 1e3, out


def cold_cache(bench: dict[str, Any], problem: Problem) -> bool:
    mode = bench.get("cache", "auto")
    return mode == "cold" or (mode == "auto" and problem.is_cuda)


@dataclass
class Pair:
    """Both sides of a paired measurement.

    `speedup` is the ratio of the medians, baseline median / candidate median (the contract's
    `speedup` = `baseline_latency_us / latency_us`); `paired_speedup` is the median of the
    per-repetition ratios baseline/candidate of calls made back to back on the same buffer,
    which cancels slow drift (clocks, thermals, neighbours) that a ratio of medians does not.
    The two agree when the machine is steady; a gap between them is itself a warning.
    """

    candidate: Stats
    baseline: Stats
    ratios: list[float]
    wall_s: float

    @property
    def speedup(self) -> float:
        return self.baseline.median_us / self.candidate.median_us

    @property
    def paired_speedup(self) -> float:
        return float(np.median(self.ratios)) if self.ratios else float("nan")


def measure_pair(
    problem: Problem,
    candidate: Callable[..., Any],
    baseline: Callable[..., Any],
    buffers: list[tuple[torch.Tensor, ...]],
    bench: dict[str, Any],
    on_output: Callable[[int, Any], None] | None = None,
    before_rep: Callable[[int, int], None] | None = None,
) -> Pair:
    """Interleave candidate and baseline calls; return both sides' statistics.

    `on_output(buffer_index, out)` sees the candidate's output of every timed call right after
    it returned (outside the timed region), so that the caller can spot-check what was timed and
    check that nothing global changed before the baseline runs next. `before_rep(rep, index)`
    runs before each repetition (outside the timed region), e.g. to refill the buffer in place.
    Warm-up calls run on every buffer first.
    """
    timer = Timer(problem, cold_cache(bench, problem))
    for _ in range(int(bench["warmup"])):
        for args in buffers:
            candidate(*args)
            baseline(*args)
    if problem.is_cuda:
        _cuda_synchronize(problem.device)
    cand_us: list[float] = []
    base_us: list[float] = []
    min_reps, max_reps = int(bench["min_reps"]), int(bench["max_reps"])
    target, cap = float(bench["target_spread"]), float(bench["time_cap_s"])
    started = _perf_counter()
    hooks_s = 0.0  # time spent in the caller's hooks does not count against the cap
    rep = 0
    while rep < max_reps:
        index = rep % len(buffers)
        if before_rep is not None:
            hook_started = _perf_counter()
            before_rep(rep, index)
            hooks_s += _perf_counter() - hook_started
        args = buffers[index]
        order = (0, 1) if rep % 2 == 0 else (1, 0)
        for side in order:
            if side == 0:
                us, out = timer.time_call(candidate, args)
                cand_us.append(us)
                if on_output is not None:
                    hook_started = _perf_counter()
                    on_output(index, out)
                    hooks_s += _perf_counter() - hook_started
                del out
            else:
                us, out = timer.time_call(baseline, args)
                base_us.append(us)
                del out
        rep += 1
        if rep >= min_reps:
            if _perf_counter() - started - hooks_s > cap:
                break
            if Stats.of(cand_us).spread < target and Stats.of(base_us).spread < target:
                break
    ratios = [b / c for b, c in zip(base_us, cand_us, strict=True) if c > 0]
    return Pair(Stats.of(cand_us), Stats.of(base_us), ratios, _perf_counter() - started)
