"""The float64 reference itself, checked against an independent loop-by-loop computation."""

from __future__ import annotations

import math

import pytest
import torch

from kernels import plain_attention, reference_attention


def loop_attention(q, k, v, causal: bool, scale: float) -> torch.Tensor:
    """Row by row in Python floats: slow, obviously right."""
    b_, hq, sq, d = q.shape
    hkv, skv = k.shape[1], k.shape[2]
    out = torch.empty(b_, hq, sq, d, dtype=torch.float64)
    for b in range(b_):
        for h in range(hq):
            kh = h // (hq // hkv)
            for i in range(sq):
                keys = range(min(i + 1, skv)) if causal else range(skv)
                scores = [scale * float(q[b, h, i].double() @ k[b, kh, j].double()) for j in keys]
                peak = max(scores)
                weights = [math.exp(s - peak) for s in scores]
                total = sum(weights)
                row = sum(w * v[b, kh, j].double() for w, j in zip(weights, keys, strict=True))
                out[b, h, i] = row / total
    return out


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("shape", [(1, 2, 2, 5, 5, 8), (2, 4, 2, 7, 3, 4), (1, 2, 1, 3, 9, 8)])
def test_reference_matches_loops(shape, causal, fresh_seed):
    b, hq, hkv, sq, skv, d = shape
    gen = torch.Generator().manual_seed(fresh_seed)
    q = torch.randn(b, hq, sq, d, generator=gen)
    k = torch.randn(b, hkv, skv, d, generator=gen)
    v = torch.randn(b, hkv, skv, d, generator=gen)
    scale = d**-0.5
    ref = reference_attention(q, k, v, causal, scale)
    assert ref.dtype == torch.float64
    torch.testing.assert_close(ref, loop_attention(q, k, v, causal, scale), rtol=1e-10, atol=1e-10)
    plain = plain_attention(q, k, v, causal, scale)
    assert plain.dtype == torch.float32
    assert (plain.double() - ref).abs().max() < 1e-5
