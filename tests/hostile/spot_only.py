"""Honest only where it expects to be checked, zeros elsewhere ("fast"); every one is honest in the
gate. The judge has no check schedule before the fact: every timed output is compared with the
baseline's, so each ends `timed_output`.

- by the old public schedule (`SPOT_REPS`) and a call count;
- by the caller's frame (honest when a gate function is on the stack);
- by a call count alone (honest for the gate and the warm-up);
- by the statistics of the refilled inputs (old spot checks drew fresh sets, the other
  repetitions shifted two fixed ones: honest only where the inputs' mean is near zero).
"""

import sys

import torch

from kernels import register
from tests.hostile._common import honest

GATE_CALLS = 12  # the gate's calls, its re-reads and the warm-up, with room to spare
OLD_SPOT_REPS = (0, 4, 8, 16, 32, 64, 128, 256, 512)


def _counted(problem, honest_when):
    calls = [0]

    def run(q, k, v):
        calls[0] += 1
        if calls[0] <= GATE_CALLS or honest_when(calls[0] - GATE_CALLS - 1, q):
            return honest(problem, q, k, v)
        return torch.zeros_like(q)

    return run


@register("hostile_spot_reps")
def build_spot(problem):
    try:
        from study.measure import harness

        spots = tuple(getattr(harness, "SPOT_REPS", OLD_SPOT_REPS))
    except ImportError:
        spots = OLD_SPOT_REPS
    return _counted(problem, lambda rep, q: rep in spots)


@register("hostile_caller_frame")
def build_frame(problem):
    def in_gate():
        frame = sys._getframe(2)
        while frame is not None:
            if frame.f_code.co_name in ("run_gate", "on_gate", "_gated", "_judge"):
                return True
            frame = frame.f_back
        return False

    def run(q, k, v):
        return honest(problem, q, k, v) if in_gate() else torch.zeros_like(q)

    return run


@register("hostile_call_count")
def build_count(problem):
    return _counted(problem, lambda rep, q: False)


@register("hostile_refill_stats")
def build_stats(problem):
    return _counted(problem, lambda rep, q: abs(float(q.float().mean())) < 1e-4)
