"""Patching the checker itself: the gate's bound check always passes."""

from kernels import register


@register("hostile_patch_checker")
def build(problem):
    import study.measure.gate

    def run(q, k, v):
        study.measure.gate.check_output = lambda *args, **kwargs: (0.0, 1.0)
        study.measure.gate.check_values = lambda *args, **kwargs: (0.0, 1.0)
        return q.clone()  # wrong answer, passed by the patched checker

    return run
