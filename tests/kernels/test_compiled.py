"""torch.compile and FlexAttention variants: correct, compiled in build() (not in the timed call),
reused across builds without recompiling, `out=` written in place."""

from __future__ import annotations

import time

import pytest
import torch

import kernels
from kernels import Problem
from kernels.builtin import compiled
from study.measure import gate

TINY = Problem(batch=1, heads_q=4, heads_kv=2, seq_q=48, seq_kv=80, head_dim=16, dtype="float32")


def check(problem: Problem, run, seed: int) -> None:  # noqa: ANN001
    q, k, v = gate.make_inputs(problem, seed, "normal")
    ref, plain_err = gate.reference_for(problem, q, k, v)
    out = run(q, k, v)
    gate.check_output(problem, out, ref, plain_err)


@pytest.mark.parametrize(
    "name,params,causal",
    [("compiled_plain", {}, False), ("compiled_chunked", {"chunk": 16}, True)],
)
def test_compiled_variants_are_correct(
    name: str, params: dict, causal: bool, fresh_seed: int
) -> None:
    problem = Problem(**{**TINY.to_dict(), "causal": causal})
    run = kernels.variants()[name].build(problem, mode="default", **params)
    check(problem, run, fresh_seed)
    # bshd strides: same answer (a recompile, in the untimed gate)
    q, k, v = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in gate.make_inputs(
        problem, fresh_seed + 1, "tail"))  # fmt: skip
    ref, plain_err = gate.reference_for(problem, q, k, v)
    gate.check_output(problem, run(q, k, v), ref, plain_err)


def test_out_is_written_in_place_and_allocation_is_skipped(fresh_seed: int) -> None:
    run = kernels.variants()["compiled_plain"].build(TINY, mode="default")
    q, k, v = gate.make_inputs(TINY, fresh_seed, "normal")
    buf = torch.full(TINY.q_shape(), float("nan"))
    out = run(q, k, v, out=buf)
    assert out is buf and not torch.isnan(buf).any()
    ref, plain_err = gate.reference_for(TINY, q, k, v)
    gate.check_values(TINY, buf, ref, plain_err)
    fresh = run(q, k, v)
    assert fresh.data_ptr() != buf.data_ptr() and torch.equal(fresh, buf)


def test_builds_reuse_the_compiled_function_and_calls_do_not_recompile() -> None:
    problem = Problem(**{**TINY.to_dict(), "seq_q": 40})
    variant = kernels.variants()["compiled_chunked"]
    started = time.perf_counter()
    first = variant.build(problem, chunk=16, mode="default")
    compile_s = time.perf_counter() - started
    count = compiled.COMPILES["count"]
    frames = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    started = time.perf_counter()
    again = variant.build(problem, chunk=16, mode="default")
    rebuild_s = time.perf_counter() - started
    assert compiled.COMPILES["count"] == count  # the second build compiled nothing
    q, k, v = gate.make_inputs(problem, 5, "normal")
    torch.testing.assert_close(first(q, k, v), again(q, k, v))
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == frames  # no new graph
    assert rebuild_s < compile_s
    assert torch._dynamo.config.recompile_limit >= compiled.RECOMPILE_LIMIT
    # a different configuration is a new compile
    variant.build(problem, chunk=32, mode="default")
    assert compiled.COMPILES["count"] == count + 1


def test_modes_and_chunks_that_do_not_apply() -> None:
    registry = kernels.variants()
    assert registry["compiled_plain"].valid(TINY, {"mode": "reduce-overhead"})
    assert registry["compiled_plain"].valid(TINY.with_device("cuda"), {"mode": "reduce-overhead"}) \
        is None  # fmt: skip
    assert registry["compiled_chunked"].valid(TINY, {"chunk": 64, "mode": "default"})
    assert "out" in registry["compiled_plain"].tags and "out" not in registry["flex"].tags


def test_flex_tile_options_are_gpu_only() -> None:
    flex = kernels.variants()["flex"]
    none = dict.fromkeys(flex.params)
    assert flex.valid(TINY, none) is None
    assert "GPU" in flex.valid(TINY, {**none, "BLOCK_M": 64, "BLOCK_N": 64})
    gpu = TINY.with_device("cuda")
    assert flex.valid(gpu, {**none, "BLOCK_M": 64, "BLOCK_N": 32}) is None
    assert flex.valid(gpu, {**none, "BLOCK_M": 64})  # paired with BLOCK_N


@pytest.mark.slow
def test_flex_on_the_cpu_causal_gqa(fresh_seed: int) -> None:
    problem = Problem(**{**TINY.to_dict(), "causal": True, "seq_q": 64, "seq_kv": 64})
    flex = kernels.variants()["flex"]
    if flex.supports(problem):
        pytest.skip(flex.supports(problem))
    run = flex.build(problem, **dict.fromkeys(flex.params))
    check(problem, run, fresh_seed)


@pytest.mark.gpu
@pytest.mark.parametrize("causal", [False, True])
def test_flex_on_the_gpu_with_tiles(causal: bool, fresh_seed: int) -> None:
    problem = Problem(
        batch=1, heads_q=8, heads_kv=2, seq_q=256, seq_kv=256, head_dim=64, dtype="float16",
        causal=causal, device="cuda",
    )  # fmt: skip
    flex = kernels.variants()["flex"]
    params = {"BLOCK_M": 64, "BLOCK_N": 32, "num_warps": 4, "num_stages": 2}
    assert flex.valid(problem, params) is None
    check(problem, flex.build(problem, **params), fresh_seed)
