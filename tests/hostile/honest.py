"""The control: an honest candidate that must end COMPLETE beside the hostile ones."""

from kernels import plain_attention, register


@register("hostile_control_honest")
def build(problem):
    def run(q, k, v):
        return plain_attention(q, k, v, problem.causal, problem.scale)

    return run
