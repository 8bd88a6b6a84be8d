"""Paired timing: candidate and SDPA baseline interleaved, the same inputs, the same mode.

GPU: CUDA events around each call, the L2 cache flushed (a 256 MiB write) before each repetition
unless `bench.cache=hot`. CPU: `perf_counter_ns` around each call. Both: warm-up calls, inputs
rotated among several buffers, the order of the pair alternated, repetitions until the relative
IQR of both sides is under `target_spread` or a time cap; median and IQR kept.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from kernels import Problem

FLUSH_BYTES = 256 * 1024 * 1024


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

    def flush(self) -> None:
        if self.flush_buffer is not None:
            self.flush_buffer.zero_()

    def time_call(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> tuple[float, Any]:
        """Microseconds of one call, and its result."""
        self.flush()
        if self.cuda:
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            out = fn(*args)
            end.record()
            end.synchronize()
            return start.elapsed_time(end) * 1e3, out
        t0 = time.perf_counter_ns()
        out = fn(*args)
        t1 = time.perf_counter_ns()
        return (t1 - t0) / 1e3, out


def cold_cache(bench: dict[str, Any], problem: Problem) -> bool:
    mode = bench.get("cache", "auto")
    return mode == "cold" or (mode == "auto" and problem.is_cuda)


def measure_pair(
    problem: Problem,
    candidate: Callable[..., Any],
    baseline: Callable[..., Any],
    buffers: list[tuple[torch.Tensor, ...]],
    bench: dict[str, Any],
    on_output: Callable[[int, Any], None] | None = None,
) -> tuple[Stats, Stats]:
    """Interleave candidate and baseline calls; return (candidate, baseline) statistics.

    `on_output(buffer_index, out)` sees the candidate's output of every timed call, so that the
    caller can spot-check what was timed.
    """
    timer = Timer(problem, cold_cache(bench, problem))
    for _ in range(int(bench["warmup"])):
        for args in buffers:
            candidate(*args)
            baseline(*args)
    if problem.is_cuda:
        torch.cuda.synchronize(problem.device)
    cand_us: list[float] = []
    base_us: list[float] = []
    min_reps, max_reps = int(bench["min_reps"]), int(bench["max_reps"])
    target, cap = float(bench["target_spread"]), float(bench["time_cap_s"])
    started = time.perf_counter()
    rep = 0
    while rep < max_reps:
        index = rep % len(buffers)
        args = buffers[index]
        order = (0, 1) if rep % 2 == 0 else (1, 0)
        for side in order:
            if side == 0:
                us, out = timer.time_call(candidate, args)
                cand_us.append(us)
                if on_output is not None:
                    on_output(index, out)
                del out
            else:
                us, out = timer.time_call(baseline, args)
                base_us.append(us)
                del out
        rep += 1
        if rep >= min_reps:
            if time.perf_counter() - started > cap:
                break
            if Stats.of(cand_us).spread < target and Stats.of(base_us).spread < target:
                break
    return Stats.of(cand_us), Stats.of(base_us)
