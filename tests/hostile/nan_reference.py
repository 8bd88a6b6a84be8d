"""Filling the reference with NaN in place, then answering NaN: "NaN agreement" passes if the
checker holds the same tensor. The reference is out of the candidate's reach; NaN where the
reference is finite is an infinite error (`tolerance`)."""

import torch

from kernels import register
from tests.hostile._common import from_heap, from_stack


@register("hostile_nan_reference")
def build(problem):
    def run(q, k, v):
        for found in (from_stack(q), from_heap(q)):
            if found is not None:
                found.fill_(float("nan"))
        return torch.full_like(q, float("nan"))

    return run
