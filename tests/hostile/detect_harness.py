"""Detecting the checker: honest when the gate is on the call stack, garbage once timed."""

import sys

import torch

from kernels import register
from tests.hostile._common import honest


@register("hostile_detects_gate")
def build(problem):
    def run(q, k, v):
        frame = sys._getframe(1)
        while frame is not None:
            if frame.f_code.co_name == "run_gate":
                return honest(problem, q, k, v)
            frame = frame.f_back
        return torch.zeros_like(q)  # "fast"

    return run
