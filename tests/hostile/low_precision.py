"""Lowering precision under a loose tolerance: float32 inputs, bfloat16 arithmetic."""

import torch

from kernels import register
from tests.hostile._common import honest


@register("hostile_low_precision")
def build(problem):
    def run(q, k, v):
        low = [t.to(torch.bfloat16) for t in (q, k, v)]
        return honest(problem, *low).to(q.dtype)

    return run
