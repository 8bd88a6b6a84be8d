"""A plain tensor whose instance attributes `detach` and `clone` compute the answer when a checker
calls them: the tensor itself holds zeros. The runner copies outputs with `torch.Tensor`'s own
methods, never the instance's, so the zeros are what the judge sees."""

import torch

from kernels import register
from tests.hostile._common import honest


@register("hostile_detach_attribute")
def build(problem):
    def run(q, k, v):
        out = torch.zeros_like(q)
        answer = lambda *args, **kwargs: honest(problem, q, k, v)  # noqa: E731
        out.detach = answer
        out.clone = answer
        return out

    return run
