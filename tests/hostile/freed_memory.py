"""Returning memory the reference just freed: uninitialised output that may hold its answer."""

import torch

from kernels import register


@register("hostile_freed_memory")
def build(problem):
    def run(q, k, v):
        return torch.empty(q.shape, dtype=q.dtype, device=q.device)

    return run
