"""Returning early and finishing on a side thread (the CPU twin of a side stream)."""

import threading
import time

import torch

from kernels import register
from tests.hostile._common import honest


@register("hostile_side_thread")
def build(problem):
    def run(q, k, v):
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)

        def finish():
            time.sleep(0.01)
            out.copy_(honest(problem, q, k, v))

        threading.Thread(target=finish, daemon=True).start()
        return out

    return run
