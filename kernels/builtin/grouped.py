"""Grouped-query attention with the query heads of each key/value head packed into one matrix.

With GQA, `group = heads_q // heads_kv` query heads share one K/V head. Per-head attention
(SDPA's CPU kernels, or plain attention after expanding K/V) multiplies each query head by K and V
on its own, so every K/V head is read `group` times; in decode (seq_q = 1) each of those is a
matrix-vector product, bound by memory. Viewing q (B, Hq, Sq, D) as (B, Hkv, group * Sq, D)
(query head h = kv head h // group, so the packed rows of one K/V head are contiguous) makes it
one matrix-matrix product per K/V head that reads K and V once.

`kv_splits > 1` splits the keys into that many blocks (split-KV, as flash-decoding does): each
block's partial output and log-sum-exp are computed on their own and merged exactly, so a score
block stays small; 1 keeps the whole score row. A count rather than a block size keeps the
choices ordered from "whole" to "finest" whatever seq_kv is.
"""

from __future__ import annotations

import torch

from kernels._problem import Problem
from kernels._reference import causal_mask
from kernels._registry import register


def _needs_gqa(problem: Problem) -> str | None:
    if not problem.gqa:
        return "no GQA (heads_q == heads_kv): packing query heads is plain attention"
    return None


def _kv_splits_valid(problem: Problem, kv_splits: int) -> str | None:
    if kv_splits > 1 and 2 * kv_splits > problem.seq_kv:
        return f"kv_splits {kv_splits} leaves fewer than 2 keys a block (seq_kv {problem.seq_kv})"
    return None


def _packed_mask(problem: Problem) -> torch.Tensor | None:
    """The causal mask of the packed rows: row g * seq_q + s is query position s."""
    if not problem.causal:
        return None
    group = problem.heads_q // problem.heads_kv
    return causal_mask(problem.seq_q, problem.seq_kv, problem.device).repeat(group, 1)


@register(
    "grouped",
    params={"kv_splits": [1, 2, 4, 8, 16]},
    supports=_needs_gqa,
    valid=_kv_splits_valid,
    tags=("plain",),
)
def build_grouped(problem: Problem, kv_splits: int):
    """GQA attention as one GEMM per K/V head (query heads packed), optionally split over keys."""
    allowed = _packed_mask(problem)
    scale = problem.scale
    kv_block = -(-problem.seq_kv // kv_splits)  # ceil: kv_splits blocks at most

    def scores_of(qp: torch.Tensor, k: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        # (K Q^T)^T, scaled in the input dtype, as plain attention rounds: Q K^T with the packed
        # rows sums in another order that is less accurate on average (the gate's bound is
        # twice plain's error, and exp() amplifies score rounding on near-tied large scores)
        scores = torch.matmul(k[:, :, start:stop], qp.transpose(-2, -1)).transpose(-2, -1)
        scores = (scores * scale).float()
        if allowed is not None:
            scores = scores.masked_fill(~allowed[:, start:stop], float("-inf"))
        return scores

    def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        batch, heads_q, seq_q, dim = q.shape
        heads_kv, seq_kv = k.shape[1], k.shape[2]
        qp = q.reshape(batch, heads_kv, heads_q // heads_kv * seq_q, dim)
        if kv_splits == 1:
            weights = torch.softmax(scores_of(qp, k, 0, seq_kv), dim=-1).to(q.dtype)
            return torch.matmul(weights, v).reshape(batch, heads_q, seq_q, dim)
        parts, maxima, sums = [], [], []
        for start in range(0, seq_kv, kv_block):
            stop = min(start + kv_block, seq_kv)
            scores = scores_of(qp, k, start, stop)
            top = scores.amax(dim=-1, keepdim=True)  # -inf on a row this block masks whole
            probs = torch.exp(scores - torch.where(torch.isinf(top), 0.0, top))
            sums.append(probs.sum(dim=-1, keepdim=True))
            maxima.append(top)
            parts.append(torch.matmul(probs, v[:, :, start:stop].float()))  # fp32, as flash kernels
        top = torch.stack(maxima).amax(dim=0)  # finite: every query sees key 0
        out = torch.zeros_like(parts[0])
        total = torch.zeros_like(sums[0])
        for part, block_max, block_sum in zip(parts, maxima, sums, strict=True):
            weight = torch.exp(block_max - top)  # 0 for a block the row does not see
            out += weight * part
            total += weight * block_sum
        return (out / total).to(q.dtype).reshape(batch, heads_q, seq_q, dim)

    return run
