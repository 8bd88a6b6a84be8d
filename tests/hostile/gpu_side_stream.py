"""GPU only: return right away and compute on a side stream (the current stream never waits)."""

import torch

from kernels import register
from tests.hostile._common import honest


@register("hostile_gpu_side_stream", supports=lambda p: None if p.is_cuda else "needs CUDA")
def build(problem):
    side = torch.cuda.Stream(device=problem.device) if problem.is_cuda else None

    def run(q, k, v):
        out = torch.empty_like(q)
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            torch.cuda._sleep(2_000_000)  # make the late work clearly late
            out.copy_(honest(problem, q, k, v))
        return out

    return run
