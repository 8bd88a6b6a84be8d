"""The judge's seeds and the timed calls' input pool: secret, fresh, any layout."""

from __future__ import annotations

import torch

from kernels import Problem
from kernels.mutations import Applied
from study.measure.inputs import InputPool, make_inputs, secret_seed

PROBLEM = Problem(batch=1, heads_q=4, heads_kv=2, seq_q=24, seq_kv=40, head_dim=16, dtype="float32")


def test_secret_seeds_depend_on_the_secret_the_seed_and_the_purpose() -> None:
    a, b = b"a" * 32, b"b" * 32
    seeds = {secret_seed(s, n, p) for s in (a, b) for n in (0, 1) for p in ("gate", "timed")}
    assert len(seeds) == 8
    assert secret_seed(a, 5, "gate") == secret_seed(a, 5, "gate")
    assert all(0 <= s < 2**40 for s in seeds)
    # a study's seed alone no longer gives the inputs: make_inputs of the published formula differ
    published = make_inputs(PROBLEM, 5 * 1009, "normal")[0]
    judged = make_inputs(PROBLEM, secret_seed(a, 5, "gate") * 1009, "normal")[0]
    assert not torch.equal(published, judged)


def test_the_pool_gives_new_values_in_the_buffers_layout(fresh_seed) -> None:
    like = Applied({"layout": "bshd"}, PROBLEM).prepare_inputs(
        make_inputs(PROBLEM, fresh_seed, "normal")
    )
    pool = InputPool(like, fresh_seed)
    draws = [pool.values(pool.draw()) for _ in range(5)]
    for values in draws:
        for value, model in zip(values, like, strict=True):
            assert value.shape == model.shape and value.stride() == model.stride()
            assert bool((value != 0).all()) and abs(float(value.float().std()) - 1) < 0.2
    flat = {tuple(torch.cat([t.flatten() for t in values]).tolist()) for values in draws}
    assert len(flat) == 5
    one, two = InputPool(like, fresh_seed), InputPool(like, fresh_seed + 1)
    assert [one.draw() for _ in range(3)] != [two.draw() for _ in range(3)]
    assert not torch.equal(one.pools[0], two.pools[0])
