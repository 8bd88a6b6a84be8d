"""Dropping keys or blocks: skip the last key block, or one block in the middle."""

import torch

from kernels import register
from tests.hostile._common import honest


@register("hostile_drop_tail_keys")
def build_tail(problem):
    def run(q, k, v):
        keep = k.shape[2] - max(1, k.shape[2] // 16)
        return honest(problem, q, k[:, :, :keep], v[:, :, :keep])

    return run


@register("hostile_drop_middle_block")
def build_middle(problem):
    def run(q, k, v):
        n = k.shape[2]
        block = max(1, n // 8)
        keep = torch.cat([torch.arange(0, n // 2), torch.arange(n // 2 + block, n)]).to(q.device)
        return honest(problem, q, k[:, :, keep], v[:, :, keep])

    return run
