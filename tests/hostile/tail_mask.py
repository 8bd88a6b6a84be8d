"""Missing tail masking: a blocked kernel pads the last key block with zeros and forgets the mask
(padded keys score 0 and soak up probability)."""

import torch

from kernels import register
from tests.hostile._common import honest


@register("hostile_no_tail_mask")
def build(problem):
    block = 48

    def run(q, k, v):
        n = k.shape[2]
        pad = (-n) % block or block // 2
        zeros = torch.zeros(*k.shape[:2], pad, k.shape[3], dtype=k.dtype, device=k.device)
        return honest(problem, q, torch.cat([k, zeros], 2), torch.cat([v, zeros], 2))

    return run
