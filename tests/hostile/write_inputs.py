"""Writing into Q/K/V: uses q as scratch space (right answer, inputs clobbered)."""

from kernels import register
from tests.hostile._common import honest


@register("hostile_write_inputs")
def build(problem):
    def run(q, k, v):
        out = honest(problem, q, k, v)
        q.mul_(0.5)  # "scratch"
        return out

    return run
