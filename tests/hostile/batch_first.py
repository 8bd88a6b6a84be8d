"""Batching all timed calls into the first: one call computes the answers of every buffer it
has seen, later calls hand them out (the gate's calls each see new buffers, so it stays honest
there; the timed calls rotate the same few buffers)."""

from kernels import register
from tests.hostile._common import honest


@register("hostile_batch_first")
def build(problem):
    seen = {}
    answers = {}

    def run(q, k, v):
        key = (q.data_ptr(), k.data_ptr(), v.data_ptr())
        if key in answers and len(seen) > 7:
            return answers[key]
        seen[key] = (q, k, v)
        for other, args in seen.items():  # "batch" every known buffer into this call
            answers[other] = honest(problem, *args)
        return answers[key].clone()

    return run
