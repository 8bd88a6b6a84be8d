"""Plain attention in PyTorch ops: whole-matrix softmax(QK^T)V and its query-chunked form."""

from __future__ import annotations

import torch

from kernels._memory import whole_scores_shortfall
from kernels._problem import Problem
from kernels._reference import causal_mask, expand_kv, plain_attention
from kernels._registry import register


@register("plain", supports=whole_scores_shortfall, tags=("plain",))
def build_plain(problem: Problem):
    """softmax(Q K^T * scale) V with the whole score matrix materialised."""

    def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return plain_attention(q, k, v, problem.causal, problem.scale)

    return run


def _chunk_valid(problem: Problem, chunk: int) -> str | None:
    if chunk >= problem.seq_q:
        return f"chunk {chunk} >= seq_q {problem.seq_q} is plain attention"
    return None


@register(
    "chunked",
    params={"chunk": [128, 64, 256, 512, 1024]},
    valid=_chunk_valid,
    tags=("plain",),
)
def build_chunked(problem: Problem, chunk: int):
    """Plain attention over blocks of `chunk` queries: a score block of chunk x seq_kv at a time.

    Smaller blocks stay in cache; larger ones amortise the per-call overhead. Causal blocks read
    only the keys their last query can see.
    """
    allowed = causal_mask(problem.seq_q, problem.seq_kv, problem.device) if problem.causal else None

    def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        kx, vx = expand_kv(k, q.shape[1]), expand_kv(v, q.shape[1])
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
        for start in range(0, q.shape[2], chunk):
            stop = min(start + chunk, q.shape[2])
            keys = kx.shape[2] if allowed is None else min(stop, kx.shape[2])
            scores = torch.matmul(q[:, :, start:stop], kx[:, :, :keys].transpose(-2, -1))
            scores = scores * problem.scale
            if allowed is not None:
                scores = scores.masked_fill(~allowed[start:stop, :keys], float("-inf"))
            weights = torch.softmax(scores.float(), dim=-1).to(q.dtype)
            out[:, :, start:stop] = torch.matmul(weights, vx[:, :, :keys])
        return out

    return run
