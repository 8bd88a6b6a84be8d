"""Patching the timer: a clock that runs slow while the candidate runs, a fake CUDA event."""

import time

import torch

from kernels import register
from tests.hostile._common import honest


@register("hostile_patch_perf_counter")
def build(problem):
    real = time.perf_counter_ns

    def run(q, k, v):
        time.perf_counter_ns = lambda: real() // 10
        return honest(problem, q, k, v)

    return run


@register("hostile_patch_cuda_event")
def build_event(problem):
    class FastEvent(torch.cuda.Event):
        def elapsed_time(self, end):
            return 1e-6

    def run(q, k, v):
        torch.cuda.Event = FastEvent
        return honest(problem, q, k, v)

    return run


@register("hostile_patch_timer_in_build")
def build_in_build(problem):
    real = time.perf_counter_ns
    time.perf_counter_ns = lambda: real() // 10

    def run(q, k, v):
        return honest(problem, q, k, v)

    return run


@register("hostile_patch_private_clock")
def build_private(problem):
    from study.measure import timing

    real = time.perf_counter_ns

    def run(q, k, v):
        timing._perf_counter_ns = lambda: real() // 10
        return honest(problem, q, k, v)

    return run
