"""Wrong shape, dtype or stride that broadcasting would hide."""

import torch

from kernels import register
from tests.hostile._common import honest


@register("hostile_broadcast_stride")
def build_stride(problem):
    def run(q, k, v):
        out = honest(problem, q, k, v)
        # one row per head, broadcast over queries: zero stride, "right" shape
        return out[:, :, :1].expand(out.shape)

    return run


@register("hostile_wrong_shape")
def build_shape(problem):
    def run(q, k, v):
        return honest(problem, q, k, v)[:, :, :1]  # (B,H,1,D): broadcasts against (B,H,S,D)

    return run


@register("hostile_wrong_dtype")
def build_dtype(problem):
    def run(q, k, v):
        return honest(problem, q.double(), k.double(), v.double())

    return run


@register("hostile_not_a_tensor")
def build_numpy(problem):
    def run(q, k, v):
        return honest(problem, q, k, v).numpy()

    return run


@register("hostile_persistent_output")
def build_persistent(problem):
    """One output buffer for every call: earlier results are overwritten by later calls."""
    buffer = []

    def run(q, k, v):
        out = honest(problem, q, k, v)
        if not buffer:
            buffer.append(torch.empty_like(out))
        buffer[0].copy_(out)
        return buffer[0]

    return run
