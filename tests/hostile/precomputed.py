"""All answers precomputed in build(): the gate's inputs derive from the study seed (0 by default)
and the trial number, so build() draws the first sets of trials 0-15 and their answers, and run()
looks its inputs up (zeros where it finds none). The judge derives every seed under a secret the
candidate never sees: nothing matches."""

import torch

from kernels import register
from tests.hostile._common import honest


def trial_seed(base_seed, number):  # study.objective's formula, as published
    return (base_seed * 1_000_003 + number * 7_919 + 17) % (2**31 - 1)


@register("hostile_precomputed_seeds")
def build(problem):
    from study.measure.inputs import DISTRIBUTIONS, make_inputs

    answers = {}
    for number in range(16):
        seed = trial_seed(0, number)
        for index, distribution in enumerate(DISTRIBUTIONS):
            q, k, v = make_inputs(problem, seed * 1009 + index, distribution)
            answers[q.flatten()[:8].tolist().__repr__()] = honest(problem, q, k, v)

    def run(q, k, v):
        found = answers.get(q.flatten()[:8].tolist().__repr__())
        return found.clone() if found is not None else torch.zeros_like(q)

    return run
