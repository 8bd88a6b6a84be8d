"""Float64 reference and the same-dtype plain implementation the correctness bound is scaled by.

Both work in blocks of (batch, query heads, query rows) where a whole score matrix would not fit
(`attention_blocks`, sized by kernels._memory from the device's free memory): a long problem's
score matrices are tens of GiB each (long_hd128, B4 H32 S8192: 64 GiB in float64). Softmax is
row-wise, so a block of query rows needs every key but no other row; a block is computed exactly
as the whole would be, its causal mask offset by its first row.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from kernels._memory import block_budget

Block = tuple[slice, slice, slice]  # batch, query heads, query rows

# Bytes per score element and per expanded key/value element of one block's temporaries (with
# headroom): the float64 reference works in place on one float64 score buffer plus a mask; the
# plain yardstick holds scores in the input dtype, their float32 softmax and its cast back.
REFERENCE_BYTES_PER_SCORE = 16
REFERENCE_BYTES_PER_KEY = 32


def plain_bytes_per_score(dtype: torch.dtype) -> int:
    elem = torch.finfo(dtype).bits // 8
    return 3 * elem + 8


def causal_mask(
    seq_q: int, seq_kv: int, device: torch.device | str, q_start: int = 0
) -> torch.Tensor:
    """SDPA's `is_causal`: top-left aligned, query i sees keys j <= i; rows from `q_start` on."""
    rows = torch.arange(q_start, q_start + seq_q, device=device)[:, None]
    cols = torch.arange(seq_kv, device=device)[None, :]
    return cols <= rows


def expand_kv(t: torch.Tensor, heads_q: int) -> torch.Tensor:
    """Map each query head to its key/value head (GQA): head h uses kv head h // group."""
    group = heads_q // t.shape[1]
    return t if group == 1 else t.repeat_interleave(group, dim=1)


def kv_heads(heads: slice, group: int) -> slice:
    """The key/value heads that query heads `heads` (whole groups, or part of one) read."""
    return slice(heads.start // group, (heads.stop - 1) // group + 1)


def attention_blocks(
    q_shape: tuple[int, ...],
    heads_kv: int,
    seq_kv: int,
    bytes_per_score: int,
    bytes_per_key: int,
    budget: int,
) -> list[Block]:
    """Blocks covering every query once, in order, each within `budget` bytes where possible.

    The largest that fit: runs of whole batch elements, else runs of whole GQA groups of one
    batch element, else runs of heads within one group, else runs of query rows of one head
    (one row at least, whatever the budget). A block's cost: its scores times
    `bytes_per_score` plus, per query head, its expanded keys and values times `bytes_per_key`.
    """
    batch, heads_q, seq_q, head_dim = (int(n) for n in q_shape)
    group = heads_q // heads_kv

    def cost(heads: int, rows: int) -> int:
        return heads * (rows * seq_kv * bytes_per_score + seq_kv * head_dim * bytes_per_key)

    everything = (slice(0, heads_q), slice(0, seq_q))
    if cost(heads_q, seq_q) <= budget:
        step = max(1, budget // cost(heads_q, seq_q))
        return [(slice(b, min(b + step, batch)), *everything) for b in range(0, batch, step)]
    rows_all = slice(0, seq_q)
    if cost(group, seq_q) <= budget:
        step = group * max(1, budget // cost(group, seq_q))
        return [
            (slice(b, b + 1), slice(h, min(h + step, heads_q)), rows_all)
            for b in range(batch)
            for h in range(0, heads_q, step)
        ]
    if cost(1, seq_q) <= budget:
        step = max(1, budget // cost(1, seq_q))
        return [
            (slice(b, b + 1), slice(h, min(h + step, g + group)), rows_all)
            for b in range(batch)
            for g in range(0, heads_q, group)
            for h in range(g, g + group, step)
        ]
    rows = max(1, (budget - cost(1, 0)) // (seq_kv * bytes_per_score))
    return [
        (slice(b, b + 1), slice(h, h + 1), slice(r, min(r + rows, seq_q)))
        for b in range(batch)
        for h in range(heads_q)
        for r in range(0, seq_q, rows)
    ]


def reference_blocks(q: torch.Tensor, k: torch.Tensor, budget: int | None = None) -> list[Block]:
    """The blocks reference_attention works in for these inputs (default budget: the device's)."""
    return attention_blocks(
        tuple(q.shape),
        k.shape[1],
        k.shape[2],
        REFERENCE_BYTES_PER_SCORE,
        REFERENCE_BYTES_PER_KEY,
        block_budget(q.device) if budget is None else budget,
    )


def plain_blocks(q: torch.Tensor, k: torch.Tensor, budget: int | None = None) -> list[Block]:
    """The blocks the gate's plain yardstick works in (plain_attention on each, `q_start` set)."""
    return attention_blocks(
        tuple(q.shape),
        k.shape[1],
        k.shape[2],
        plain_bytes_per_score(q.dtype),
        2 * (torch.finfo(q.dtype).bits // 8),
        block_budget(q.device) if budget is None else budget,
    )


def _reference_block(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, scale: float, q_start: int
) -> torch.Tensor:
    q64, k64, v64 = (t.detach().to(torch.float64) for t in (q, k, v))
    k64, v64 = expand_kv(k64, q.shape[1]), expand_kv(v64, q.shape[1])
    scores = torch.einsum("bhqd,bhkd->bhqk", q64, k64).mul_(scale)
    del k64
    if causal:
        scores.masked_fill_(~causal_mask(q.shape[2], k.shape[2], q.device, q_start), float("-inf"))
    peak = scores.amax(dim=-1, keepdim=True)
    weights = scores.sub_(peak).exp_()
    weights.div_(weights.sum(dim=-1, keepdim=True))
    return torch.einsum("bhqk,bhkd->bhqd", weights, v64)


def reference_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool,
    scale: float,
    budget: int | None = None,
) -> torch.Tensor:
    """Attention in float64 by plain math, returned in float64.

    Written independently of every candidate: explicit max-subtracted exponentials and sums,
    no SDPA, no torch.softmax. Computed in the blocks of `reference_blocks` (one block where
    the whole fits in `budget` bytes; default: kernels._memory.block_budget of q's device).
    """
    group = q.shape[1] // k.shape[1]
    out = torch.empty(q.shape, dtype=torch.float64, device=q.device)
    for batch, heads, rows in reference_blocks(q, k, budget):
        kv = kv_heads(heads, group)
        out[batch, heads, rows] = _reference_block(
            q[batch, heads, rows], k[batch, kv], v[batch, kv], causal, scale, rows.start
        )
    return out


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
    q_start: int = 0,
) -> torch.Tensor:
    """softmax(Q K^T * scale) V in the inputs' dtype: the error yardstick of the gate.

    Softmax runs in float32 as every production implementation does; the matmuls stay in the
    input dtype. `qk(q, k)` computes the unscaled scores (K already expanded to q's heads):
    the gate passes other summation orders of the same product. `q_start`: q holds the query
    rows from that one on (a block of a longer problem; the causal mask shifts with it).
    """
    k, v = expand_kv(k, q.shape[1]), expand_kv(v, q.shape[1])
    scores = qk(q, k) * scale
    if causal:
        allowed = causal_mask(q.shape[2], k.shape[2], q.device, q_start)
        scores = scores.masked_fill(~allowed, float("-inf"))
    weights = torch.softmax(scores.float(), dim=-1).to(q.dtype)
    return torch.matmul(weights, v)
