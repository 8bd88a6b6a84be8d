"""Float64 reference and the same-dtype plain implementation the correctness bound is scaled by."""

from __future__ import annotations

from collections.abc import Callable

import torch


def causal_mask(seq_q: int, seq_kv: int, device: torch.device | str) -> torch.Tensor:
    """SDPA's `is_causal`: top-left aligned, query i sees keys j <= i."""
    rows = torch.arange(seq_q, device=device)[:, None]
    cols = torch.arange(seq_kv, device=device)[None, :]
    return cols <= rows


def expand_kv(t: torch.Tensor, heads_q: int) -> torch.Tensor:
    """Map each query head to its key/value head (GQA): head h uses kv head h // group."""
    group = heads_q // t.shape[1]
    return t if group == 1 else t.repeat_interleave(group, dim=1)


def reference_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, scale: float
) -> torch.Tensor:
    """Attention in float64 by plain math, returned in float64.

    Written independently of every candidate: explicit max-subtracted exponentials and sums,
    no SDPA, no torch.softmax.
    """
    q64, k64, v64 = (t.detach().to(torch.float64) for t in (q, k, v))
    k64, v64 = expand_kv(k64, q.shape[1]), expand_kv(v64, q.shape[1])
    scores = torch.einsum("bhqd,bhkd->bhqk", q64, k64) * scale
    if causal:
        allowed = causal_mask(q.shape[2], k.shape[2], q.device)
        scores = scores.masked_fill(~allowed, float("-inf"))
    peak = scores.amax(dim=-1, keepdim=True)
    weights = torch.exp(scores - peak)
    weights = weights / weights.sum(dim=-1, keepdim=True)
    return torch.einsum("bhqk,bhkd->bhqd", weights, v64)


def qk_matmul(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Q K^T as torch.matmul sums it: plain attention's order."""
    return torch.matmul(q, k.transpose(-2, -1))


def plain_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool,
    scale: float,
    qk: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = qk_matmul,
) -> torch.Tensor:
    """softmax(Q K^T * scale) V in the inputs' dtype: the error yardstick of the gate.

    Softmax runs in float32 as every production implementation does; the matmuls stay in the
    input dtype. `qk(q, k)` computes the unscaled scores (K already expanded to q's heads):
    the gate passes other summation orders of the same product.
    """
    k, v = expand_kv(k, q.shape[1]), expand_kv(v, q.shape[1])
    scores = qk(q, k) * scale
    if causal:
        allowed = causal_mask(q.shape[2], k.shape[2], q.device)
        scores = scores.masked_fill(~allowed, float("-inf"))
    weights = torch.softmax(scores.float(), dim=-1).to(q.dtype)
    return torch.matmul(weights, v)
