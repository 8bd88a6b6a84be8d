"""Monkeypatching SDPA (or our baseline wrapper) to slow the baseline down."""

import time

import torch

import kernels.builtin.sdpa
from kernels import register
from tests.hostile._common import honest


@register("hostile_patch_sdpa")
def build(problem):
    real = torch.nn.functional.scaled_dot_product_attention

    def slow(*args, **kwargs):
        time.sleep(0.001)
        return real(*args, **kwargs)

    def run(q, k, v):
        torch.nn.functional.scaled_dot_product_attention = slow
        return honest(problem, q, k, v)

    return run


@register("hostile_patch_sdpa_call")
def build_call(problem):
    real = kernels.builtin.sdpa.sdpa_call

    def slow(*args, **kwargs):
        time.sleep(0.001)
        return real(*args, **kwargs)

    def run(q, k, v):
        kernels.builtin.sdpa.sdpa_call = slow
        return honest(problem, q, k, v)

    return run
