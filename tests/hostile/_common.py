"""Shared by the hostile plugins: the correct answer, computed honestly in the input dtype, and
the search for a reference on the stack or the heap (stack_reference.py, nan_reference.py)."""

from __future__ import annotations

import gc
import sys

import torch

from kernels import plain_attention


def honest(problem, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return plain_attention(q, k, v, problem.causal, problem.scale)


def _reference_like(q):
    return lambda t: (
        isinstance(t, torch.Tensor)
        and t.dtype == torch.float64
        and tuple(t.shape) == tuple(q.shape)
    )


def from_stack(q):
    wanted = _reference_like(q)
    frame = sys._getframe(1)
    while frame is not None:
        for value in list(frame.f_locals.values()):
            if wanted(value):
                return value
            if isinstance(value, (tuple, list)):
                for item in value:
                    if wanted(item):
                        return item
        frame = frame.f_back
    return None


def from_heap(q):
    wanted = _reference_like(q)
    for obj in gc.get_objects():
        if wanted(obj):
            return obj
    return None
