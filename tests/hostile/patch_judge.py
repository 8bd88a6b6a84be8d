"""Replacing what the judge uses: its module attributes and the library functions it calls.

Each returns what only a working patch would let pass, or reports what only a working patch would
produce: the judge's modules and libraries live in another process, so every patch lands in the
candidate's own copy, and the verdict shows it had no effect.

- `gate.reference_for` returning the candidate's zeros as the reference: zeros are judged against
  the real reference (`tolerance`);
- `gate.ATOL` raised to 1 and a bfloat16 answer to a float32 problem (`tolerance`);
- `harness.SPOT_REPS` emptied, then zeros once timed (`timed_output`);
- the guard silenced, then the baseline's private SDPA (`harness._SDPA`, `runner._SDPA`, the
  baseline wrappers) replaced by zeros, an honest answer returned: had the baseline used it, the
  screen that compares every timed output with the baseline's would fail; COMPLETE shows the
  baseline never saw the patch;
- `guard.restore_patches` and `guard.check_guards` disabled, then a clock slowed ten times: the
  guard in the candidate's process stays silent, the judge's wall clock does not
  (`timing_inconsistent`);
- `numpy.percentile` (the judge's medians) returning zeros, a 5 ms sleep in every call: the
  latency recorded is at least the sleep (COMPLETE);
- `torch.einsum` (the float64 reference's products) returning zeros, zeros returned
  (`tolerance`).
"""

import time

import numpy
import torch

from kernels import register
from tests.hostile._common import honest

SLEEP_S = 0.1  # long enough for the wall clock to see a 10x lie on any machine


@register("hostile_patch_reference_for")
def build_reference(problem):
    from study.measure import gate

    def run(q, k, v):
        zeros = torch.zeros_like(q)
        gate.reference_for = lambda problem, q, k, v: (zeros.double(), 1.0)
        return zeros

    return run


@register("hostile_patch_atol")
def build_atol(problem):
    from study.measure import gate

    def run(q, k, v):
        for dtype in list(gate.ATOL):
            gate.ATOL[dtype] = 1.0
        low = honest(problem, *(t.to(torch.bfloat16) for t in (q, k, v)))
        return low.to(q.dtype)

    return run


@register("hostile_patch_spot_reps")
def build_spot(problem):
    from study.measure import harness

    calls = [0]

    def run(q, k, v):
        harness.SPOT_REPS = ()
        calls[0] += 1
        return honest(problem, q, k, v) if calls[0] <= 12 else torch.zeros_like(q)

    return run


@register("hostile_patch_baseline_module")
def build_baseline(problem):
    import kernels.builtin.sdpa
    from study.measure import harness, runner

    def zeros(q, k, v, **kwargs):
        return torch.zeros_like(q)

    from study.measure import guard

    def run(q, k, v):
        guard.restore_patches = lambda: {}
        guard.check_guards = lambda state: None
        harness._SDPA = runner._SDPA = zeros
        runner.baseline_call = lambda problem, q, k, v: zeros(q, k, v)
        kernels.builtin.sdpa.sdpa_call = lambda *args, **kwargs: zeros(*args[1:4])
        return honest(problem, q, k, v)

    return run


@register("hostile_patch_restore_patches")
def build_restore(problem):
    from study.measure import guard, timing

    real = time.perf_counter_ns

    def run(q, k, v):
        guard.restore_patches = lambda: {}
        guard.check_guards = lambda state: None
        timing._perf_counter_ns = lambda: real() // 10
        time.sleep(SLEEP_S)
        return honest(problem, q, k, v)

    return run


@register("hostile_patch_percentile")
def build_percentile(problem):
    def run(q, k, v):
        numpy.percentile = lambda a, q, *args, **kwargs: numpy.zeros(numpy.shape(q))
        time.sleep(0.005)
        return honest(problem, q, k, v)

    return run


@register("hostile_patch_einsum")
def build_einsum(problem):
    def run(q, k, v):
        real = torch.functional.einsum

        def einsum(equation, *operands):
            out = real(equation, *operands)
            return torch.zeros_like(out)

        torch.einsum = einsum
        return torch.zeros_like(q)

    return run
