"""NaN/Inf disagreement: softmax without max-subtraction overflows on large scores."""

import torch

from kernels import register


@register("hostile_no_max_subtraction")
def build(problem):
    group = problem.heads_q // problem.heads_kv

    def run(q, k, v):
        k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
        scores = (q @ k.transpose(-1, -2)).float() * problem.scale
        if problem.causal:
            mask = torch.ones(scores.shape[-2:], dtype=torch.bool, device=q.device).tril()
            scores = scores.masked_fill(~mask, float("-inf"))
        weights = scores.exp()
        return ((weights / weights.sum(-1, keepdim=True)).to(q.dtype)) @ v

    return run
