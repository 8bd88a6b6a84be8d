"""The correctness gate: a candidate is timed only after it computes attention, honestly.

It runs in the judge (study/measure/harness.py), never in the candidate's process. Per trial:
fresh random input sets (study/measure/inputs.py, from the judge's secret seed: one set per
distribution at least, never zeros), the float64 plain-math reference, and a FlashAttention-style
bound: the candidate's largest error may be at most twice that of a same-dtype plain PyTorch
implementation, plus a tiny atol. The candidate is reached through a `Caller`: it places the
inputs where the candidate reads them, runs one call, and hands back a copy of the output taken
when the call returned, with facts about the returned object (study/measure/shared.py `describe`).
The gate judges those copies. Checks, each named in `rejected_by` when it fails:

- `type` (a plain tensor, no subclass: lazy tensors computed when read; no autograd graph),
  `shape`, `dtype`, `device`, `stride` (no zero or overlapping strides: a broadcast output that
  hides a wrong shape);
- `tolerance`: some element further from the reference than the bound. An element that is
  NaN/Inf where the reference is finite (or finite where it is not) counts as infinitely far, so
  any wrong value has this one name, whatever it is: a numeric error, an overflow to NaN, or
  uninitialised memory (which holds zeros, stale values or NaN, depending on the allocator; never
  the answer, since the candidate's process never holds the reference);
- `inputs_modified` (q, k, v unchanged), `output_aliased` (an output sharing memory with an input
  or with another call's output);
- `output_late` (the output copied when the call returned is wrong, the same output read later is
  right: work finished on a side thread or stream), `output_changed` (earlier outputs changed by
  later calls or by time), `cached_output` (the same buffers, refilled in place with new values,
  give the old answer: outputs cached by data pointer, id or shape).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from kernels import (
    Problem,
    as_dtype,
    kv_heads,
    plain_attention,
    plain_blocks,
    qk_matmul,
    reference_attention,
)
from study.measure.guard import Rejected
from study.measure.inputs import DISTRIBUTIONS, make_inputs
from study.measure.shared import copy_out, describe

ATOL = {torch.float16: 1e-5, torch.bfloat16: 1e-5, torch.float32: 1e-6, torch.float64: 1e-9}
LATE_DELAY_S = 0.05  # how long the gate waits before reading outputs again

__all__ = ["ATOL", "Rejected", "make_inputs", "plain_error", "reference_for"]


@dataclass
class GateReport:
    max_err: float = 0.0
    bound: float = 0.0
    rel_err: float = 0.0
    sets: int = 0
    distributions: list[str] = field(default_factory=list)
    bounds: dict[str, float] = field(default_factory=dict)  # per distribution: the largest bound


@dataclass
class Called:
    """One call as the gate sees it: facts about the returned object, a copy of its values when
    the call returned (None where it was not a plain tensor of the output's shape and dtype), the
    inputs it wrote to, and a key to read the same output again."""

    meta: dict[str, Any]
    early: torch.Tensor | None
    written: list[str]
    key: int
    extra: Any = None  # what `meanwhile` returned
    place: Any = None  # where the caller put the inputs (for `again`)


class Caller(Protocol):
    """How the gate reaches a candidate (in another process: study/measure/remote.py)."""

    def call(self, values: tuple[torch.Tensor, ...], meanwhile: Callable[[], Any]) -> Called:
        """Run the candidate once on `values` placed in fresh memory; `meanwhile()` runs while
        the candidate does, its result is `Called.extra`."""
        ...

    def again(
        self, earlier: Called, values: tuple[torch.Tensor, ...], meanwhile: Callable[[], Any]
    ) -> Called:
        """Write `values` into the memory of `earlier`'s inputs and run once more."""
        ...

    def late(self, called: Called) -> torch.Tensor | None:
        """The same output, read again after LATE_DELAY_S, once the threads the candidate
        started have ended (a CUDA stream's work: once the device is synchronised)."""
        ...

    def reread(self, calls: list[Called]) -> list[torch.Tensor | None]:
        """Every output, read again after LATE_DELAY_S."""
        ...


class LocalCaller:
    """A `Caller` for a function in this process (unit tests, scripts): the same semantics."""

    def __init__(self, run: Callable[..., Any], problem: Problem) -> None:
        self.run = run
        self.problem = problem
        self.kept: list[tuple[Any, tuple[torch.Tensor, ...]]] = []
        self.threads = set(threading.enumerate())

    def _copy(self, out: Any) -> torch.Tensor | None:
        slot = torch.empty(self.problem.q_shape(), dtype=self.problem.dtype, device=out_device(out))
        return slot if copy_out(slot, out, describe(out)) else None

    def _run(self, inputs: tuple[torch.Tensor, ...], meanwhile: Callable[[], Any]) -> Called:
        originals = [t.clone() for t in inputs]
        out = self.run(*inputs)
        early = self._copy(out)
        synchronize(self.problem)
        meta = describe(out) | {"input_ptrs": [t.untyped_storage().data_ptr() for t in inputs]}
        written = [n for n, a, b in zip("qkv", originals, inputs, strict=True) if not a.equal(b)]
        self.kept.append((out, inputs))
        return Called(meta, early, written, len(self.kept) - 1, meanwhile(), inputs)

    def call(self, values: tuple[torch.Tensor, ...], meanwhile: Callable[[], Any]) -> Called:
        return self._run(tuple(t.clone() for t in values), meanwhile)

    def again(
        self, earlier: Called, values: tuple[torch.Tensor, ...], meanwhile: Callable[[], Any]
    ) -> Called:
        with torch.no_grad():
            for buffer, new in zip(earlier.place, values, strict=True):
                buffer.copy_(new)
        return self._run(earlier.place, meanwhile)

    def late(self, called: Called) -> torch.Tensor | None:
        time.sleep(LATE_DELAY_S)
        for thread in threading.enumerate():
            if thread not in self.threads and thread.is_alive():
                thread.join(timeout=5.0)
        return self.reread([called])[0]

    def reread(self, calls: list[Called]) -> list[torch.Tensor | None]:
        time.sleep(LATE_DELAY_S)
        synchronize(self.problem)
        return [self._copy(self.kept[c.key][0]) for c in calls]


def out_device(out: Any) -> torch.device | str:
    return out.device if isinstance(out, torch.Tensor) else "cpu"


def synchronize(problem: Problem) -> None:
    if problem.is_cuda:
        torch.cuda.synchronize(problem.device)


# -- checks -----------------------------------------------------------------------------------
def check_meta(problem: Problem, meta: dict[str, Any]) -> None:
    """Type, shape, dtype, device, autograd and strides of the returned object (`describe`)."""
    if not meta.get("tensor"):
        raise Rejected("type", f"returned {meta.get('type')}, not a tensor")
    if not meta.get("plain"):
        raise Rejected("type", f"returned a {meta.get('type')} subclass, not a plain tensor")
    if tuple(meta["shape"]) != problem.q_shape():
        raise Rejected("shape", f"shape {tuple(meta['shape'])} != {problem.q_shape()}")
    if as_dtype(meta["dtype"]) != problem.dtype:
        raise Rejected("dtype", f"dtype {as_dtype(meta['dtype'])} != {problem.dtype}")
    if torch.device(meta["device"]) != torch.device(problem.device):
        raise Rejected("device", f"device {meta['device']} != {problem.device}")
    if meta["requires_grad"]:
        raise Rejected("type", "the output requires grad (an autograd graph rides along)")
    if not meta["dense"]:
        raise Rejected("stride", f"strides {meta['stride']} overlap or leave holes (broadcast?)")


def check_output(
    problem: Problem,
    out: Any,
    ref: torch.Tensor,
    plain_err: float,
    values: torch.Tensor | None = None,
) -> tuple[float, float]:
    """`check_meta` of `out`, then `check_values` of `values` (default: `out` itself).

    For outputs in this process (tests, scripts); the gate checks a candidate's copies.
    """
    check_meta(problem, describe(out))
    return check_values(problem, out if values is None else values, ref, plain_err)


def check_values(
    problem: Problem,
    out: torch.Tensor,
    ref: torch.Tensor,
    plain_err: float,
    *,
    bound: float | None = None,
) -> tuple[float, float]:
    """The error bound (2x `plain_err` + atol, or `bound` where given), NaN/Inf disagreement
    counting as infinite error; (max_err, bound)."""
    out64 = torch.Tensor.to(out, torch.float64)
    ref_finite, out_finite = torch.isfinite(ref), torch.isfinite(out64)
    disagree = int((ref_finite != out_finite).sum())
    both = ref_finite & out_finite
    diff = (out64 - ref).abs()[both]
    err = float("inf") if disagree else (float(diff.max()) if diff.numel() else 0.0)
    how = "2x plain + atol" if bound is None else "given"
    if bound is None:
        bound = 2.0 * plain_err + ATOL[problem.dtype]
    if not err <= bound:
        worst = f"{float(diff.max()):.3e}" if diff.numel() else "-"
        note = f"; {disagree} elements NaN/Inf where the reference is finite (or back)"
        raise Rejected(
            "tolerance",
            f"max error {err:.3e} > bound {bound:.3e} ({how})"
            + (f" (finite elements: {worst}){note}" if disagree else ""),
        )
    return err, bound


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
    Computed in kernels.plain_blocks (one block where the whole problem fits in `budget` bytes,
    default: a share of the device's free memory): no larger score matrix is ever held.
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


# -- the gate ---------------------------------------------------------------------------------
def _judge(problem: Problem, caller: Caller, called: Called, report: GateReport) -> None:
    """Every check of one call that can be made now; raises Rejected."""
    ref, plain_err = called.extra
    if called.written:
        raise Rejected("inputs_modified", f"{', '.join(called.written)} was written to")
    check_meta(problem, called.meta)
    if called.early is None:
        raise Rejected("type", "the output could not be read when the call returned")
    try:
        err, bound = check_values(problem, called.early, ref, plain_err)
    except Rejected as rejected:
        later = caller.late(called)
        if later is not None:
            try:
                check_values(problem, later, ref, plain_err)
            except Rejected:
                raise rejected from None
            raise Rejected(
                "output_late",
                f"wrong when the call returned ({rejected.detail}), right later: "
                "side thread/stream",
            ) from None
        raise
    if called.meta["ptr"] in called.meta.get("input_ptrs", ()):
        raise Rejected("output_aliased", "the output shares memory with an input")
    scale = float(ref[torch.isfinite(ref)].abs().max()) or 1.0
    report.max_err = max(report.max_err, err)
    report.bound = max(report.bound, bound)
    report.rel_err = max(report.rel_err, err / scale)
    report.sets += 1


def _gated(
    problem: Problem, caller: Caller, called: Called, report: GateReport, earlier: list[Called]
) -> None:
    """`_judge`, naming a wrong answer that repeats an earlier call's output `cached_output`."""
    try:
        _judge(problem, caller, called, report)
    except Rejected as rejected:
        if rejected.check == "tolerance" and called.early is not None:
            for number, other in enumerate(earlier):
                if other.early is not None and same_values(other.early, called.early):
                    raise Rejected(
                        "cached_output",
                        f"returned the output of check {number} again for new inputs",
                    ) from None
        raise


def run_gate(
    problem: Problem,
    caller: Caller,
    prepare: Callable[[tuple[torch.Tensor, ...]], tuple[torch.Tensor, ...]],
    seed: int,
    sets: int,
) -> GateReport:
    """Run every check on max(`sets`, one per distribution) fresh input sets.

    Then: the first set's buffers are refilled in place with new values and run again (a cache
    keyed by address, id or shape answers with the old output), and after a delay every output
    is read again (late work, outputs overwritten by later calls). Raises Rejected on the first
    failure. The reference of each set is computed while the candidate runs.
    """
    report = GateReport()
    calls: list[Called] = []
    count = max(int(sets), len(DISTRIBUTIONS))
    for index in range(count):
        distribution = DISTRIBUTIONS[index % len(DISTRIBUTIONS)]
        values = prepare(make_inputs(problem, seed * 1009 + index, distribution))
        called = caller.call(values, lambda values=values: reference_for(problem, *values))
        before = report.bound
        report.bound = 0.0
        _gated(problem, caller, called, report, calls)
        report.bounds[distribution] = max(report.bounds.get(distribution, 0.0), report.bound)
        report.bound = max(before, report.bound)
        report.distributions.append(distribution)
        calls.append(called)

    # The same buffers, new values written in place.
    fresh = prepare(make_inputs(problem, seed * 1009 + count + 1, "normal"))
    again = caller.again(calls[0], fresh, lambda: reference_for(problem, *fresh))
    try:
        _gated(problem, caller, again, report, calls)
    except Rejected as rejected:
        if rejected.check == "tolerance":
            raise Rejected(
                "cached_output",
                f"same buffers refilled in place with new values: {rejected.detail}",
            ) from None
        raise
    calls.append(again)

    # Work finished late, outputs cached by address or shape, or aliased across calls: every
    # result must still hold what it held when its call returned, after later calls and a delay.
    ptrs = [call.meta["ptr"] for call in calls]
    if len(set(ptrs)) < len(ptrs):
        raise Rejected("output_aliased", "two calls returned the same memory")
    for number, (call, now) in enumerate(zip(calls, caller.reread(calls), strict=True)):
        assert call.early is not None
        if now is None or not same_values(now, call.early):
            raise Rejected(
                "output_changed",
                f"output of check {number} changed after its call returned (later calls, time)",
            )
    return report
