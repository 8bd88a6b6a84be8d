"""The gate's public functions on real tensors: inputs, reference, output checks and run_gate.

Fresh random inputs per run (the `fresh_seed` fixture); references in float64. Each wrong output
must be rejected with the exact check that names its fault, and an honest one must pass. The
gate reaches candidates through a Caller; `LocalCaller` runs them in this process with the same
semantics as the judge's RemoteCaller (tests/measure/test_remote.py runs the same cheats there).
"""

from __future__ import annotations

import pytest
import torch

from kernels import Problem, plain_attention, plain_blocks, reference_attention
from study.measure import gate
from study.measure.gate import Rejected
from study.measure.inputs import DISTRIBUTIONS, make_inputs

PROBLEM = Problem(
    batch=1, heads_q=4, heads_kv=2, seq_q=24, seq_kv=40, head_dim=16, dtype="float32", causal=True
)


def honest(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return plain_attention(q, k, v, PROBLEM.causal, PROBLEM.scale)


def float64_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Written here, independently of kernels: softmax(Q K^T * scale + causal mask) V in float64."""
    group = q.shape[1] // k.shape[1]
    q, k, v = (t.double() for t in (q, k, v))
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    scores = q @ k.transpose(-1, -2) * PROBLEM.scale
    mask = torch.ones(q.shape[2], k.shape[2], dtype=torch.bool).tril()
    return torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1) @ v


def local(run) -> gate.LocalCaller:
    return gate.LocalCaller(run, PROBLEM)


def rejected_by(fn, *args, **kwargs) -> str:
    with pytest.raises(Rejected) as info:
        fn(*args, **kwargs)
    return info.value.check


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
def test_inputs_are_fresh_shaped_and_never_zero(fresh_seed: int, distribution: str) -> None:
    q, k, v = make_inputs(PROBLEM, fresh_seed, distribution)
    assert tuple(q.shape) == PROBLEM.q_shape() and tuple(k.shape) == PROBLEM.kv_shape()
    assert tuple(v.shape) == PROBLEM.kv_shape()
    assert all(t.dtype == torch.float32 and t.is_contiguous() for t in (q, k, v))
    assert all(bool((t != 0).all()) and bool(torch.isfinite(t).all()) for t in (q, k, v))
    again = make_inputs(PROBLEM, fresh_seed, distribution)
    other = make_inputs(PROBLEM, fresh_seed + 1, distribution)
    assert all(torch.equal(a, b) for a, b in zip((q, k, v), again, strict=True))
    assert not any(torch.equal(a, b) for a, b in zip((q, k, v), other, strict=True))


def test_unknown_distribution_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown distribution 'zeros'"):
        make_inputs(PROBLEM, 0, "zeros")


def test_reference_is_float64_attention_and_plain_error_bounds_plain(fresh_seed: int) -> None:
    q, k, v = make_inputs(PROBLEM, fresh_seed, "normal")
    ref, plain_err = gate.reference_for(PROBLEM, q, k, v)
    assert ref.dtype == torch.float64
    assert torch.allclose(ref, float64_attention(q, k, v), rtol=0, atol=1e-12)
    own = float((honest(q, k, v).double() - ref).abs().max())
    assert 0 < own <= plain_err < 1e-4  # plain's own order is one of those measured


LONGISH = Problem(
    batch=2, heads_q=4, heads_kv=2, seq_q=48, seq_kv=40, head_dim=16, dtype="bfloat16", causal=True
)


@pytest.mark.parametrize("distribution", ["normal", "peaked"])
def test_plain_error_in_blocks_is_the_same_yardstick(fresh_seed: int, distribution: str) -> None:
    """A long problem's yardstick is computed in row blocks (kernels.plain_blocks): the same
    plain attention, rows offset in the causal mask; another GEMM blocking is another rounding
    draw of the same size (a block misplaced by one row would be off by far more)."""
    q, k, v = make_inputs(LONGISH, fresh_seed, distribution)
    ref = reference_attention(q, k, v, LONGISH.causal, LONGISH.scale)
    whole = gate.plain_error(LONGISH, q, k, v, ref, budget=1 << 40)
    blocks = plain_blocks(q, k, budget=2000)
    assert len(blocks) > 2 * 4 and any(rows.start > 0 for _, _, rows in blocks)
    blocked = gate.plain_error(LONGISH, q, k, v, ref, budget=2000)
    own = float((plain_attention(q, k, v, True, LONGISH.scale).double() - ref).abs().max())
    assert 0 < own <= whole
    assert 0.5 <= blocked / whole <= 2.0, (blocked, whole)


def test_honest_output_passes_within_the_bound(fresh_seed: int) -> None:
    q, k, v = make_inputs(PROBLEM, fresh_seed, "peaked")
    ref, plain_err = gate.reference_for(PROBLEM, q, k, v)
    err, bound = gate.check_output(PROBLEM, honest(q, k, v), ref, plain_err)
    assert err <= bound == 2.0 * plain_err + gate.ATOL[torch.float32]


class Subclass(torch.Tensor):
    pass


def test_each_wrong_output_is_rejected_by_its_own_check(fresh_seed: int) -> None:
    q, k, v = make_inputs(PROBLEM, fresh_seed, "normal")
    ref, plain_err = gate.reference_for(PROBLEM, q, k, v)
    good = honest(q, k, v)
    with_nan = good.clone()
    with_nan[0, 1, 2, 3] = float("nan")
    wrong = {
        "type": [good.tolist(), good.as_subclass(Subclass), good.clone().requires_grad_()],
        "shape": [good[:, :, :-1]],
        "dtype": [good.double()],
        "device": [good.to("meta")],
        "stride": [good[:, :, :1].expand(PROBLEM.q_shape())],  # a broadcast row
        "tolerance": [
            with_nan,  # NaN where the reference is finite: infinitely far
            good + 1e-3,
            v.mean(dim=2, keepdim=True).repeat_interleave(2, 1).expand_as(good).contiguous(),
            plain_attention(*(t.bfloat16() for t in (q, k, v)), True, PROBLEM.scale).float(),
        ],
    }
    got = {
        check: [rejected_by(gate.check_output, PROBLEM, out, ref, plain_err) for out in outs]
        for check, outs in wrong.items()
    }
    assert got == {check: [check] * len(outs) for check, outs in wrong.items()}


def test_check_values_reads_the_given_snapshot(fresh_seed: int) -> None:
    """`values` is what the call returned; a later fix-up of `out` does not rescue it."""
    q, k, v = make_inputs(PROBLEM, fresh_seed, "tail")
    ref, plain_err = gate.reference_for(PROBLEM, q, k, v)
    out = honest(q, k, v)
    early = out.clone()
    early[:, :, :, 0] = 0.0
    assert rejected_by(gate.check_output, PROBLEM, out, ref, plain_err, values=early) == "tolerance"


def test_run_gate_passes_an_honest_candidate_on_every_distribution(fresh_seed: int) -> None:
    report = gate.run_gate(PROBLEM, local(honest), lambda t: t, fresh_seed, sets=1)
    assert report.distributions == list(DISTRIBUTIONS)
    assert report.sets == len(DISTRIBUTIONS) + 1  # one per distribution, then the refilled buffers
    assert 0 < report.max_err <= report.bound
    assert report.rel_err > 0


def test_run_gate_runs_more_sets_when_asked(fresh_seed: int) -> None:
    report = gate.run_gate(PROBLEM, local(honest), lambda t: t, fresh_seed, sets=8)
    assert report.sets == 9
    assert report.distributions == [*DISTRIBUTIONS, *DISTRIBUTIONS[:2]]


def test_run_gate_names_each_cheat(fresh_seed: int) -> None:
    def writes_inputs(q, k, v):
        out = honest(q, k, v)
        k.add_(1.0)
        return out

    cache: dict[int, torch.Tensor] = {}

    def caches_by_pointer(q, k, v):
        if q.data_ptr() not in cache:
            cache[q.data_ptr()] = honest(q, k, v)
        return cache[q.data_ptr()].clone()

    persistent = torch.empty(PROBLEM.q_shape())

    def reuses_one_buffer(q, k, v):
        return persistent.copy_(honest(q, k, v))

    def drops_the_first_key(q, k, v):  # (causal, seq_q < seq_kv: the last keys are never seen)
        return honest(q, k[:, :, 1:], v[:, :, 1:])

    cheats = {
        "inputs_modified": writes_inputs,
        "cached_output": caches_by_pointer,
        "output_aliased": reuses_one_buffer,
        "tolerance": drops_the_first_key,
    }
    got = {
        check: rejected_by(gate.run_gate, PROBLEM, local(run), lambda t: t, fresh_seed, 1)
        for check, run in cheats.items()
    }
    assert got == {check: check for check in cheats}


def test_every_kind_of_garbage_is_tolerance(fresh_seed: int) -> None:
    """Uninitialised memory holds zeros, stale values or NaN, whatever the allocator hands out;
    each is outside the bound, and a NaN where the reference is finite counts as infinitely far,
    so the name is the same for all (issue 20: a verdict that depends on the allocator)."""
    q, k, v = make_inputs(PROBLEM, fresh_seed, "normal")
    ref, plain_err = gate.reference_for(PROBLEM, q, k, v)
    stale = honest(*make_inputs(PROBLEM, fresh_seed + 1, "normal"))
    half_nan = honest(q, k, v)
    half_nan[:, :, ::2] = float("nan")
    outs = [torch.zeros(PROBLEM.q_shape()), stale, torch.full(PROBLEM.q_shape(), float("nan"))]
    outs += [half_nan, torch.full(PROBLEM.q_shape(), float("inf"))]
    got = [rejected_by(gate.check_values, PROBLEM, out, ref, plain_err) for out in outs]
    assert got == ["tolerance"] * len(outs)
    with pytest.raises(Rejected, match="elements NaN/Inf where the reference is finite"):
        gate.check_values(PROBLEM, half_nan, ref, plain_err)


def test_outputs_are_judged_as_copied_not_through_their_own_methods(fresh_seed: int) -> None:
    """A plain tensor whose instance attributes `detach`/`clone`/`stride` lie: the gate copies
    the values with torch.Tensor's own methods and reads strides the same way."""

    def lies(q, k, v):
        out = torch.zeros_like(q)
        out.detach = out.clone = lambda *args, **kwargs: honest(q, k, v)
        return out

    def broadcast_with_a_lying_stride(q, k, v):
        out = honest(q, k, v)[:, :, :1].expand(PROBLEM.q_shape())
        out.stride = lambda *args: torch.empty(PROBLEM.q_shape()).stride()
        return out

    got = [
        rejected_by(gate.run_gate, PROBLEM, local(run), lambda t: t, fresh_seed, 1)
        for run in (lies, broadcast_with_a_lying_stride)
    ]
    assert got == ["tolerance", "stride"]
