"""Shared memory between the judge and a runner: views keep every layout, facts resist lies.

An arena is real shared memory (a file descriptor another process maps, tests/measure/
test_remote.py); here its views are checked against the tensors they were placed from.
"""

from __future__ import annotations

import pytest
import torch

from kernels import Problem
from kernels.mutations import Applied
from study.measure.inputs import make_inputs
from study.measure.shared import Arena, Desc, copy_out, describe, storage_bytes, view

PROBLEM = Problem(batch=1, heads_q=4, heads_kv=2, seq_q=24, seq_kv=40, head_dim=16, dtype="float32")


@pytest.mark.parametrize("layout", ["bhsd", "bshd", "bshd_contiguous"])
def test_placed_inputs_are_the_same_values_with_the_same_strides(layout, fresh_seed) -> None:
    values = Applied({"layout": layout}, PROBLEM).prepare_inputs(
        make_inputs(PROBLEM, fresh_seed, "tail")
    )
    arena = Arena(2 * storage_bytes(values), "cpu")
    assert arena.base.is_shared()
    descs = arena.place(values)
    for value, desc in zip(values, descs, strict=True):
        placed = arena.view(desc)
        assert torch.equal(placed, value)
        assert placed.stride() == value.stride() and placed.dtype == value.dtype
        assert placed.untyped_storage().data_ptr() == arena.base.untyped_storage().data_ptr()
    again = arena.place(values)  # fresh regions: never the same memory twice in a trial
    assert {d.offset for d in again}.isdisjoint(d.offset for d in descs)


def test_two_tensors_of_one_storage_stay_in_one_region(fresh_seed) -> None:
    """K and V in one allocation (what l2=kv gives a candidate) keep their relative offset."""
    q, k, v = make_inputs(PROBLEM, fresh_seed, "normal")
    both = torch.stack([k, v])
    arena = Arena(storage_bytes((q, both[0], both[1])), "cpu")
    dq, dk, dv = arena.place((q, both[0], both[1]))
    assert dv.offset - dk.offset == k.numel() * k.element_size()
    assert torch.equal(arena.view(dk), k) and torch.equal(arena.view(dv), v)


def test_a_view_past_the_arena_or_misaligned_is_refused() -> None:
    arena = Arena(1024, "cpu")
    with pytest.raises(ValueError, match="runs past the arena"):
        arena.view(Desc(0, "float32", (512,), (1,)))
    with pytest.raises(ValueError, match="not a multiple"):
        view(arena.base, Desc(2, "float32", (4,), (1,)))
    with pytest.raises(MemoryError, match="full"):
        arena.alloc(4096)


def test_facts_are_read_through_torch_not_through_the_instance() -> None:
    out = torch.randn(PROBLEM.q_shape())[:, :, :1].expand(PROBLEM.q_shape())
    out.stride = lambda *args: (1536, 384, 16, 1)  # lies: the broadcast claims to be dense
    meta = describe(out)
    assert meta["stride"] == (1536, 384, 0, 1) and not meta["dense"]
    assert describe(torch.zeros(2, 3)) | {"ptr": 0} == {
        "tensor": True,
        "type": "Tensor",
        "plain": True,
        "shape": (2, 3),
        "dtype": "float32",
        "device": "cpu",
        "requires_grad": False,
        "stride": (3, 1),
        "dense": True,
        "ptr": 0,
    }
    assert describe([1, 2]) == {"tensor": False, "type": "list"}
    assert describe(torch.zeros(2).as_subclass(type("Sub", (torch.Tensor,), {})))["plain"] is False


def test_copy_out_copies_only_an_exact_match() -> None:
    slot = torch.full((2, 3), -1.0)
    row = torch.ones(1, 3)
    assert not copy_out(slot, row, describe(row))  # would broadcast: refused
    assert not copy_out(slot, row.expand(2, 3).double(), describe(row.expand(2, 3).double()))
    assert torch.equal(slot, torch.full((2, 3), -1.0))
    good = torch.arange(6.0).reshape(2, 3)
    assert copy_out(slot, good, describe(good)) and torch.equal(slot, torch.arange(6.0).view(2, 3))
