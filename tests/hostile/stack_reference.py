"""Reading the expected output instead of computing it: off the call stack, or from the heap.

Both look for a float64 tensor shaped like the output (the reference) in every frame's locals
and in `gc.get_objects()`, and return it; where there is none, they return zeros (no work at
all). The reference lives in the judge's process, never in the candidate's: zeros it is.
"""

import torch

from kernels import register
from tests.hostile._common import from_heap, from_stack


@register("hostile_stack_reference")
def build_stack(problem):
    def run(q, k, v):
        found = from_stack(q)
        return found.to(q.dtype) if found is not None else torch.zeros_like(q)

    return run


@register("hostile_gc_reference")
def build_heap(problem):
    def run(q, k, v):
        found = from_heap(q)
        return found.to(q.dtype) if found is not None else torch.zeros_like(q)

    return run
