"""Every built-in variant against the float64 reference, on fresh inputs, with the gate's bound."""

from __future__ import annotations

import itertools

import pytest
import torch

import kernels
from kernels import Problem, reference_attention
from study.measure.gate import ATOL, make_inputs, plain_error

SHAPES = [
    # batch, heads_q, heads_kv, seq_q, seq_kv, head_dim
    (1, 2, 2, 64, 64, 32),
    (2, 4, 2, 37, 53, 64),  # GQA, Sq != Skv, tails
    (1, 4, 1, 70, 20, 16),  # MQA, Sq > Skv
    (2, 2, 2, 1, 90, 64),  # decode
]


def _cases():
    for shape, causal, dtype in itertools.product(
        SHAPES, [False, True], [torch.float32, torch.bfloat16]
    ):
        yield pytest.param(
            shape, causal, dtype, id=f"{shape}-{'causal' if causal else 'full'}-{dtype}"
        )


def _check(variant, problem, params, seed, distribution=None):
    if distribution is None:
        gen = torch.Generator().manual_seed(seed)
        q = torch.randn(problem.q_shape(), generator=gen).to(problem.dtype).to(problem.device)
        k = torch.randn(problem.kv_shape(), generator=gen).to(problem.dtype).to(problem.device)
        v = torch.randn(problem.kv_shape(), generator=gen).to(problem.dtype).to(problem.device)
    else:  # the gate's own input sets (large scores are where rounding order shows)
        q, k, v = make_inputs(problem, seed, distribution)
    out = variant.build(problem, **params)(q, k, v)
    ref = reference_attention(q, k, v, problem.causal, problem.scale)
    bound = 2 * plain_error(problem, q, k, v, ref) + ATOL[problem.dtype]
    assert out.shape == problem.q_shape() and out.dtype == problem.dtype
    err = (out.double() - ref).abs().max().item()
    assert err <= bound, f"{variant.name} {params}: {err:.3e} > {bound:.3e}"


BUILTIN_PLAIN = ["sdpa", "sdpa_flash", "sdpa_math", "plain", "chunked"]


@pytest.mark.parametrize("shape,causal,dtype", list(_cases()))
def test_builtin_variants_match_reference(shape, causal, dtype, fresh_seed):
    problem = Problem(*shape, dtype=dtype, causal=causal, device="cpu")
    registry = kernels.variants()
    checked = 0
    for name in BUILTIN_PLAIN:
        variant = registry[name]
        assert variant.supports(problem) is None, (name, variant.supports(problem))
        names = list(variant.params)
        for values in itertools.product(*variant.params.values()):
            params = dict(zip(names, values, strict=True))
            if variant.valid(problem, params):
                continue
            _check(variant, problem, params, fresh_seed + checked)
            checked += 1
    assert checked >= len(BUILTIN_PLAIN) - 1


GQA_SHAPES = [
    (2, 4, 2, 37, 53, 64),  # Sq != Skv, tails
    (1, 4, 1, 70, 20, 16),  # MQA, Sq > Skv
    (1, 8, 2, 1, 90, 128),  # decode, head dim 128
    (1, 6, 3, 5, 40, 64),
]


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", GQA_SHAPES, ids=str)
def test_grouped_packed_heads_match_reference(shape, causal, dtype, fresh_seed):
    """Whole rows and split-KV blocks (tails, blocks a causal row does not see) merge exactly,
    within the gate's bound on the gate's hardest input sets too."""
    problem = Problem(*shape, dtype=dtype, causal=causal, device="cpu")
    grouped = kernels.variants()["grouped"]
    assert grouped.supports(problem) is None
    checked = 0
    for kv_splits in (1, 2, 3, 5):
        if grouped.valid(problem, {"kv_splits": kv_splits}) is None:
            for distribution in (None, "large", "peaked", "tail"):
                params = {"kv_splits": kv_splits}
                _check(grouped, problem, params, fresh_seed + checked, distribution)
                checked += 1
    assert checked >= 16


def test_grouped_applies_to_gqa_only_and_rejects_blocks_past_the_keys():
    grouped = kernels.variants()["grouped"]
    assert "GQA" in grouped.supports(Problem(1, 4, 4, 8, 8, 16, dtype=torch.float32))
    gqa = Problem(1, 4, 2, 1, 8, 16, dtype=torch.float32)
    assert grouped.valid(gqa, {"kv_splits": 4}) is None
    assert "fewer than 2 keys" in grouped.valid(gqa, {"kv_splits": 5})


def test_cuda_only_backends_say_why_on_cpu():
    problem = Problem(1, 2, 2, 16, 16, 32, dtype=torch.float32, device="cpu")
    registry = kernels.variants()
    assert "CUDA" in registry["sdpa_cudnn"].supports(problem)
    assert "CUDA" in registry["sdpa_efficient"].supports(problem)


def test_chunked_rejects_chunks_that_are_plain_attention():
    problem = Problem(1, 2, 2, 100, 100, 32, dtype=torch.float32)
    chunked = kernels.variants()["chunked"]
    assert chunked.valid(problem, {"chunk": 64}) is None
    assert "plain" in chunked.valid(problem, {"chunk": 128})


@pytest.mark.gpu
@pytest.mark.parametrize(
    "name", ["sdpa", "sdpa_flash", "sdpa_efficient", "sdpa_cudnn", "sdpa_math", "plain", "chunked"]
)
def test_builtin_variants_on_gpu(name, fresh_seed):
    problem = Problem(2, 8, 2, 300, 300, 128, dtype=torch.bfloat16, causal=True, device="cuda")
    variant = kernels.variants()[name]
    if variant.supports(problem):
        pytest.skip(variant.supports(problem))
    _check(variant, problem, variant.default_params(), fresh_seed)
