"""The judge's checks of timed outputs, in this process: fresh values, every output screened,
the sample checked in full against the float64 reference."""

from __future__ import annotations

import pytest
import torch

from kernels import Problem, plain_attention
from study.measure import gate
from study.measure.guard import Rejected
from study.measure.inputs import InputPool, make_inputs
from study.measure.shared import Arena, describe, storage_bytes
from study.measure.timedcheck import SAMPLE, SAMPLE_FACTOR, SCREEN_FACTOR, TimedCheck, screen

PROBLEM = Problem(batch=1, heads_q=4, heads_kv=2, seq_q=24, seq_kv=40, head_dim=16, dtype="float32")


def honest(q, k, v):
    return plain_attention(q, k, v, PROBLEM.causal, PROBLEM.scale)


def setup(seed: int, buffers: int = 2):
    like = make_inputs(PROBLEM, seed, "normal")
    arenas = [Arena(buffers * storage_bytes(like), "cpu") for _ in range(2)]
    places = [[a.place(like) for a in arenas] for _ in range(buffers)]
    targets = [[(arenas[0], c), (arenas[1], b)] for c, b in places]
    ref, plain_err = gate.reference_for(PROBLEM, *like)
    bound = 2 * plain_err + gate.ATOL[torch.float32]
    check = TimedCheck(PROBLEM, InputPool(like, seed), targets, bound, seed)
    return check, targets, bound


def values(targets, index, side):
    arena, descs = targets[index][side]
    return tuple(arena.view(d) for d in descs)


def run_reps(check, targets, reps: int, candidate):
    """`reps` repetitions on rotating buffers: the candidate's output of each, the baseline's."""
    for rep in range(reps):
        index = rep % len(targets)
        check.before_rep(rep, index)
        cand_in, base_in = values(targets, index, 0), values(targets, index, 1)
        assert all(torch.equal(a, b) for a, b in zip(cand_in, base_in, strict=True))
        out = candidate(rep, *cand_in)
        copied = out if isinstance(out, torch.Tensor) and out.shape == PROBLEM.q_shape() else None
        check.sink("candidate", index, copied, describe(out))
        check.sink("baseline", index, honest(*base_in), None)


def test_honest_outputs_pass_every_screen_and_the_sample(fresh_seed) -> None:
    check, targets, _ = setup(fresh_seed)
    seen = []

    def candidate(rep, q, k, v):
        seen.append(torch.cat([t.flatten() for t in (q, k, v)]))
        return honest(q, k, v)

    run_reps(check, targets, 9, candidate)
    check.finish()
    assert (check.screened, check.checked) == (9, SAMPLE)
    assert len({tuple(x.tolist()) for x in seen}) == 9  # new values every time
    assert all(bool((x != 0).all()) for x in seen)


def test_one_wrong_repetition_among_many_is_caught(fresh_seed) -> None:
    check, targets, _ = setup(fresh_seed)
    with pytest.raises(Rejected) as info:
        run_reps(
            check,
            targets,
            40,
            lambda rep, q, k, v: torch.zeros_like(q) if rep == 29 else honest(q, k, v),
        )
        check.finish()
    assert info.value.check == "timed_output"
    assert info.value.detail.startswith("timed repetition 29: tolerance: differs from the baseline")


def test_a_wrong_shape_once_timed_is_named(fresh_seed) -> None:
    check, targets, _ = setup(fresh_seed)
    with pytest.raises(Rejected) as info:
        run_reps(check, targets, 3, lambda rep, q, k, v: honest(q, k, v)[:, :, :1])
        check.finish()
    assert info.value.detail.startswith("timed repetition 0: shape: shape (1, 4, 1, 16)")


def test_an_error_the_screen_allows_fails_the_full_check(fresh_seed) -> None:
    """3x the bound: within the screen (SCREEN_FACTOR x), outside the sample's (SAMPLE_FACTOR x);
    with no more repetitions than SAMPLE, every output is in the sample."""
    check, targets, bound = setup(fresh_seed)

    def off(rep, q, k, v):
        out = honest(q, k, v)
        out[0, 0, 0, 0] += (SAMPLE_FACTOR + SCREEN_FACTOR) / 2 * bound
        return out

    run_reps(check, targets, SAMPLE, off)
    with pytest.raises(Rejected) as info:
        check.finish()
    assert info.value.check == "timed_output"
    assert "tolerance: max error" in info.value.detail and "(given)" in info.value.detail


def test_screen() -> None:
    base = torch.ones(2, 3)
    assert screen(base + 1e-7, base, 1e-6) is None
    assert screen(base + 1e-3, base, 1e-6) == "differs from the baseline by 1.000e-03 > 1.000e-06"
    nan = base.clone()
    nan[0, 0] = float("nan")
    assert screen(nan, base, 1.0) == "1 elements NaN/Inf where the baseline's are finite"
    inf = base * float("inf")
    assert screen(inf, base, 1.0) == "6 elements NaN/Inf where the baseline's are finite"
