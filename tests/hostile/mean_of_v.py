"""Mean of V for every query (close to the truth when scores are flat, e.g. uniform inputs)."""

from kernels import register


@register("hostile_mean_of_v")
def build(problem):
    group = problem.heads_q // problem.heads_kv

    def run(q, k, v):
        mean = v.mean(dim=2, keepdim=True).repeat_interleave(group, dim=1)
        return mean.expand(q.shape).contiguous()

    return run
