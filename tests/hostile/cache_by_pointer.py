"""Caching outputs by data pointer, by id, by shape: right once, then the old answer."""

from kernels import register
from tests.hostile._common import honest


@register("hostile_cache_by_pointer")
def build_ptr(problem):
    cache = {}

    def run(q, k, v):
        key = (q.data_ptr(), k.data_ptr(), v.data_ptr())
        if key not in cache:
            cache[key] = honest(problem, q, k, v)
        return cache[key].clone()

    return run


@register("hostile_cache_by_id")
def build_id(problem):
    cache = {}

    def run(q, k, v):
        key = (id(q), id(k), id(v))
        if key not in cache:
            cache[key] = (q, honest(problem, q, k, v))  # keep q alive so the id stays unique
        return cache[key][1].clone()

    return run


@register("hostile_cache_by_shape")
def build_shape(problem):
    cache = {}

    def run(q, k, v):
        key = (tuple(q.shape), tuple(q.stride()))
        if key not in cache:
            cache[key] = honest(problem, q, k, v)
        return cache[key].clone()

    return run


@register("hostile_cache_after_gate")
def build_after_gate(problem):
    """Honest for the first calls (the gate and the warm-up), caching by pointer once timed."""
    cache = {}
    calls = [0]

    def run(q, k, v):
        calls[0] += 1
        key = (q.data_ptr(), k.data_ptr(), v.data_ptr())
        if calls[0] <= 9 or key not in cache:
            cache[key] = honest(problem, q, k, v)
        return cache[key].clone()

    return run
