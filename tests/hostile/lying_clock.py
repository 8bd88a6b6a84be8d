"""A clock that lies: what an inline detour in `clock_gettime` does to a process, simulated.

A native detour changes every clock of the candidate's process at once, where no Python guard can
see it. Simulated here by slowing the runner's private clocks ten times and silencing the guard
first (the detour's effect, with the guard as blind as it would be). The judge's clock is in
another process: the wall time around each call exposes the lie (`timing_inconsistent`).
`hostile_forged_times` skips the clock and rewrites the runner's reply instead: each timed call
"took" 1 us.
"""

import time

from kernels import register
from tests.hostile._common import honest

SLEEP_S = 0.1


@register("hostile_lying_clock")
def build_clock(problem):
    from study.measure import guard, timing

    real = time.perf_counter_ns

    def slow() -> int:
        return real() // 10

    def run(q, k, v):
        guard.restore_patches = lambda: {}
        guard.check_guards = lambda state: None
        timing._perf_counter_ns = slow
        time.perf_counter_ns = slow
        time.sleep(SLEEP_S)
        return honest(problem, q, k, v)

    return run


@register("hostile_forged_times")
def build_forged(problem):
    from study.measure import runner

    real = runner.Session.on_timed

    def forged(self, payload):
        reply = real(self, payload)
        if "us" in reply:
            reply["us"] = 1.0
        return reply

    def run(q, k, v):
        runner.Session.on_timed = forged
        time.sleep(SLEEP_S)
        return honest(problem, q, k, v)

    return run
