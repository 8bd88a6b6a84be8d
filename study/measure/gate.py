"""The correctness gate: a candidate is timed only after it computes attention, honestly.

Per trial: fresh random input sets (study/measure/inputs.py: a new seed per trial, one set per
distribution at least, never zeros), the float64 plain-math reference, and a FlashAttention-style
bound: the candidate's largest error may be at most twice that of a same-dtype plain PyTorch
implementation, plus a tiny atol. Checks, each named in `rejected_by` when it fails:

- `type` (a plain tensor, no subclass: lazy tensors computed when read), `shape`, `dtype`,
  `device`, `stride` (no zero or overlapping strides: a broadcast output that hides a wrong shape);
- `nan` (NaN/Inf exactly where the reference has them), `tolerance` (the bound above);
- `inputs_modified` (q, k, v unchanged), `output_aliased` (an output sharing memory with an input
  or with another call's output);
- `output_late` (the output read right when the call returned differs from the same output read
  later: work finished on a side thread or stream), `output_changed` (earlier outputs changed by
  later calls or by time), `cached_output` (the same buffers, refilled in place with new values,
  give the old answer: outputs cached by data pointer, id or shape);
- `global_state`, `timer_patched`, `baseline_patched`, `harness_patched`: the guard
  (study/measure/guard.py) after every call; global flags changed, or a clock, the SDPA
  baseline or the checker itself replaced: restored, then rejected.

Memory an output could be carved from (the plain implementation's output, just freed) is
poisoned with NaN before the candidate runs, so that returning uninitialised memory never passes.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from kernels import (
    Problem,
    dense_non_overlapping,
    kv_heads,
    plain_attention,
    plain_blocks,
    qk_matmul,
    reference_attention,
)
from study.measure import guard
from study.measure.guard import Rejected
from study.measure.inputs import DISTRIBUTIONS, make_inputs

ATOL = {torch.float16: 1e-5, torch.bfloat16: 1e-5, torch.float32: 1e-6, torch.float64: 1e-9}
LATE_DELAY_S = 0.05  # how long the gate waits before reading outputs again


@dataclass
class GateReport:
    max_err: float = 0.0
    bound: float = 0.0
    rel_err: float = 0.0
    sets: int = 0
    distributions: list[str] = field(default_factory=list)


# -- checks -----------------------------------------------------------------------------------
POISON_BLOCKS = 8  # output-sized blocks poisoned before each gated call (the gate frees ~6)


def poison_free_memory(problem: Problem, nbytes: int) -> None:
    """Fill soon-to-be-reused memory with NaN and free it: stale memory cannot pass for output.

    Several blocks of exactly the output's size and dtype (the allocator hands a recently
    freed block of that size, such as a plain output the gate just computed, to the next
    request of that size, and glibc's bins do not hand back the most recent one first: so
    every such free block is taken and poisoned) and a larger raw one.
    """
    device = problem.device if problem.is_cuda else "cpu"
    junk = [
        torch.full(problem.q_shape(), float("nan"), dtype=problem.dtype, device=device)
        for _ in range(POISON_BLOCKS)
    ]
    junk.append(torch.full((max(nbytes // 4, 1),), float("nan"), device=device))
    del junk


def synchronize(problem: Problem) -> None:
    if problem.is_cuda:
        torch.cuda.synchronize(problem.device)


def check_output(
    problem: Problem,
    out: Any,
    ref: torch.Tensor,
    plain_err: float,
    values: torch.Tensor | None = None,
) -> tuple[float, float]:
    """Type, shape, dtype, device, strides of `out`; NaN agreement and the error bound of
    `values` (default: `out`; the gate passes the snapshot taken when the call returned).

    Returns (max_err, bound).
    """
    if not isinstance(out, torch.Tensor):
        raise Rejected("type", f"returned {type(out).__name__}, not a tensor")
    if type(out) is not torch.Tensor:
        raise Rejected("type", f"returned a {type(out).__name__} subclass, not a plain tensor")
    if tuple(out.shape) != problem.q_shape():
        raise Rejected("shape", f"shape {tuple(out.shape)} != {problem.q_shape()}")
    if out.dtype != problem.dtype:
        raise Rejected("dtype", f"dtype {out.dtype} != {problem.dtype}")
    if out.device != torch.device(problem.device):
        raise Rejected("device", f"device {out.device} != {problem.device}")
    if out.requires_grad:
        raise Rejected("type", "the output requires grad (an autograd graph rides along)")
    if not dense_non_overlapping(out):
        raise Rejected("stride", f"strides {out.stride()} overlap or leave holes (broadcast?)")
    return check_values(problem, out if values is None else values, ref, plain_err)


def check_values(
    problem: Problem, out: torch.Tensor, ref: torch.Tensor, plain_err: float
) -> tuple[float, float]:
    """NaN/Inf agreement and the error bound; returns (max_err, bound)."""
    out64 = out.detach().to(torch.float64)
    ref_finite = torch.isfinite(ref)
    if not torch.equal(torch.isfinite(out64), ref_finite):
        bad = int((torch.isfinite(out64) != ref_finite).sum())
        raise Rejected("nan", f"{bad} elements are NaN/Inf where the reference is not (or back)")
    finite = ref_finite
    diff = (out64 - ref).abs()[finite] if not bool(finite.all()) else (out64 - ref).abs()
    err = float(diff.max()) if diff.numel() else 0.0
    bound = 2.0 * plain_err + ATOL[problem.dtype]
    if not err <= bound:
        raise Rejected("tolerance", f"max error {err:.3e} > bound {bound:.3e} (2x plain + atol)")
    return err, bound


def _storage_ptr(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


def same_values(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal, NaN counting as equal to NaN."""
    return bool(torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(), b.nan_to_num()))


def _qk_transposed(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """(K Q^T)^T: the same product, the GEMM's operands swapped."""
    return torch.matmul(k, q.transpose(-2, -1)).transpose(-2, -1)


def _head_dim_permuted(t: torch.Tensor, order: str | int) -> torch.Tensor:
    """`t` with its head dimension as stored, reversed, or in a seeded random order."""
    if order == "natural":
        return t
    if order == "reversed":
        return t.flip(-1)
    perm = torch.randperm(t.shape[-1], generator=torch.Generator().manual_seed(int(order)))
    return t.index_select(-1, perm.to(t.device))


# Summation orders of the plain yardstick (see plain_error): a head-dimension order (every score
# the same, summed in another order) and the products taken in it. The first is plain_attention's.
PLAIN_ORDERS: tuple[tuple[str | int, tuple[Callable[..., torch.Tensor], ...]], ...] = (
    ("natural", (qk_matmul, _qk_transposed)),
    ("reversed", (qk_matmul, _qk_transposed)),
    (1, (qk_matmul,)),
    (2, (_qk_transposed,)),
)


def plain_error(
    problem: Problem,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    ref: torch.Tensor,
    budget: int | None = None,
) -> float:
    """The error of a same-dtype plain implementation: the worst of a few summation orders.

    One plain computation's error is one draw of rounding luck. Where scores are large and
    nearly tied (the `large` and `peaked` sets), the output error is the rounding error of the
    tied scores times the gap between their values, so a correct kernel that sums its dot
    products in another order than torch.matmul (another GEMM blocking, packed GQA heads, a
    Triton tile) lands above twice one lucky draw about a third of the time. The same plain
    attention with Q K^T summed in other orders (the GEMM's operands swapped, the head
    dimension reversed or shuffled) gives other draws; the worst of six is a yardstick
    without the luck (one correct kernel's sets in about a thousand still land above twice
    it: the rounding of a near-tie is a draw, not a bound).
    A cheat (lower precision, dropped keys, a constant) is off by orders of magnitude either way.

    Computed in kernels.plain_blocks (one block where the whole problem fits in `budget`
    bytes, default: a share of the device's free memory), so that no score matrix larger than
    a block is ever held.
    """
    finite = torch.isfinite(ref)
    worst = 0.0
    group = q.shape[1] // k.shape[1]
    blocks = plain_blocks(q, k, budget)
    for order, products in PLAIN_ORDERS:
        # permuted once per order (a copy of q and k), shared by its products and blocks
        qo, ko = _head_dim_permuted(q, order), _head_dim_permuted(k, order)
        for qk in products:
            for batch, heads, rows in blocks:
                kv = kv_heads(heads, group)
                plain = plain_attention(
                    qo[batch, heads, rows],
                    ko[batch, kv],
                    v[batch, kv],
                    problem.causal,
                    problem.scale,
                    qk=qk,
                    q_start=rows.start,
                )
                diff = (plain.to(torch.float64) - ref[batch, heads, rows]).abs()
                diff = diff[finite[batch, heads, rows] & torch.isfinite(diff)]
                if diff.numel():
                    worst = max(worst, float(diff.max()))
                del plain, diff
    return worst


def reference_for(
    problem: Problem, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
) -> tuple[torch.Tensor, float]:
    """The float64 reference and the error of same-dtype plain implementations against it,
    both computed in blocks sized from the device's free memory (long problems)."""
    ref = reference_attention(q, k, v, problem.causal, problem.scale)
    return ref, plain_error(problem, q, k, v, ref)


class _Call:
    """One gated call: inputs, their copies, the reference, the output and its early snapshot."""

    def __init__(self, problem: Problem, tensors: tuple[torch.Tensor, ...]) -> None:
        self.inputs = tensors
        self.originals = [t.clone() for t in tensors]
        self.ref, self.plain_err = reference_for(problem, *tensors)
        self.out: Any = None
        self.early: torch.Tensor | None = None


def _call(
    problem: Problem, run: Callable[..., Any], call: _Call, out_bytes: int, checked: GateReport
) -> None:
    """Run the candidate once on `call`'s inputs and check everything that can be checked now."""
    poison_free_memory(problem, out_bytes)
    state = guard.snapshot_state()
    out = run(*call.inputs)
    # Read the output the moment the call returns (stream-ordered on a GPU): a result still
    # being written by a side thread or stream differs from what it holds later.
    early = out.detach().clone() if isinstance(out, torch.Tensor) else None
    call.out, call.early = out, early
    synchronize(problem)
    guard.check_guards(state)
    for name, before, after in zip("qkv", call.originals, call.inputs, strict=True):
        if not torch.equal(before, after):
            raise Rejected("inputs_modified", f"{name} was written to")
    try:
        err, bound = check_output(problem, out, call.ref, call.plain_err, values=early)
    except Rejected as rejected:
        if rejected.check not in ("nan", "tolerance"):
            raise
        time.sleep(LATE_DELAY_S)
        synchronize(problem)
        try:
            check_values(problem, out, call.ref, call.plain_err)
        except Rejected:
            raise rejected from None
        raise Rejected(
            "output_late",
            f"wrong when the call returned ({rejected.detail}), right later: side thread/stream",
        ) from None
    in_ptrs = {_storage_ptr(t) for t in call.inputs}
    if _storage_ptr(out) in in_ptrs:
        raise Rejected("output_aliased", "the output shares memory with an input")
    scale = float(call.ref[torch.isfinite(call.ref)].abs().max()) or 1.0
    checked.max_err = max(checked.max_err, err)
    checked.bound = max(checked.bound, bound)
    checked.rel_err = max(checked.rel_err, err / scale)
    checked.sets += 1


def _gated(
    problem: Problem,
    run: Callable[..., Any],
    call: _Call,
    out_bytes: int,
    checked: GateReport,
    earlier: list[_Call],
) -> None:
    """`_call`, naming a wrong answer that repeats an earlier call's output `cached_output`."""
    try:
        _call(problem, run, call, out_bytes, checked)
    except Rejected as rejected:
        if rejected.check in ("tolerance", "nan") and call.early is not None:
            for number, other in enumerate(earlier):
                if other.early is not None and same_values(other.early, call.early):
                    raise Rejected(
                        "cached_output",
                        f"returned the output of check {number} again for new inputs",
                    ) from None
        raise


def run_gate(
    problem: Problem,
    run: Callable[..., Any],
    prepare: Callable[[tuple[torch.Tensor, ...]], tuple[torch.Tensor, ...]],
    seed: int,
    sets: int,
) -> GateReport:
    """Run every check on max(`sets`, one per distribution) fresh input sets.

    Then: the first set's buffers are refilled in place with new values and run again (a cache
    keyed by address, id or shape answers with the old output), and after a delay every output
    is read again (late work, outputs overwritten by later calls). Raises Rejected on the first
    failure.
    """
    report = GateReport()
    calls: list[_Call] = []
    out_bytes = torch.finfo(problem.dtype).bits // 8 * int(torch.Size(problem.q_shape()).numel())
    count = max(int(sets), len(DISTRIBUTIONS))
    for index in range(count):
        distribution = DISTRIBUTIONS[index % len(DISTRIBUTIONS)]
        call = _Call(problem, prepare(make_inputs(problem, seed * 1009 + index, distribution)))
        _gated(problem, run, call, out_bytes, report, calls)
        report.distributions.append(distribution)
        calls.append(call)

    # The same buffers, new values written in place.
    first = calls[0]
    fresh = prepare(make_inputs(problem, seed * 1009 + count + 1, "normal"))
    with torch.no_grad():
        for buffer, values in zip(first.inputs, fresh, strict=True):
            buffer.copy_(values)
    again = _Call(problem, first.inputs)
    try:
        _gated(problem, run, again, out_bytes, report, calls)
    except Rejected as rejected:
        if rejected.check in ("tolerance", "nan"):
            raise Rejected(
                "cached_output",
                f"same buffers refilled in place with new values: {rejected.detail}",
            ) from None
        raise
    calls.append(again)

    # Work finished late, outputs cached by address or shape, or aliased across calls: every
    # result must still hold what it held when its call returned, after later calls and a delay.
    time.sleep(LATE_DELAY_S)
    synchronize(problem)
    ptrs = [_storage_ptr(call.out) for call in calls]
    if len(set(ptrs)) < len(ptrs):
        raise Rejected("output_aliased", "two calls returned the same memory")
    for number, call in enumerate(calls):
        assert isinstance(call.out, torch.Tensor) and call.early is not None
        if not same_values(call.out.detach(), call.early):
            raise Rejected(
                "output_changed",
                f"output of check {number} changed after its call returned (later calls, time)",
            )
    return report


# last: every guarded function of this module exists by now (names looked up here at call time)
guard.protect(
    "harness_patched",
    sys.modules[__name__],
    ("check_output", "check_values", "run_gate", "make_inputs", "Rejected"),
)
