"""The guard on real torch state: changed flags and replaced functions are restored and named.

It runs in the runner processes (hygiene there, not the judge's security: see
study/measure/runner.py); here it runs in the test process.

Every test puts back by hand what it changed, so that a guard that fails to restore fails only
its own test.
"""

from __future__ import annotations

import time
import types

import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from study.measure import guard, runner, timing
from study.measure.guard import Rejected


def test_unchanged_state_passes() -> None:
    state = guard.snapshot_state()
    guard.check_guards(state)
    assert guard.restore_state(state) == []
    assert guard.restore_patches() == {}


def test_changed_flags_are_restored_and_named() -> None:
    state = guard.snapshot_state()
    threads = torch.get_num_threads()
    precision = torch.get_float32_matmul_precision()
    dtype = torch.get_default_dtype()
    try:
        torch.set_num_threads(threads + 1)
        torch.set_float32_matmul_precision("medium" if precision != "medium" else "high")
        torch.set_default_dtype(torch.float64 if dtype != torch.float64 else torch.float32)
        changed = guard.restore_state(state)
        assert sorted(changed) == ["default_dtype", "float32_matmul_precision", "num_threads"]
        assert torch.get_num_threads() == threads
        assert torch.get_float32_matmul_precision() == precision
        assert torch.get_default_dtype() == dtype
        assert guard.snapshot_state() == state
    finally:
        torch.set_num_threads(threads)
        torch.set_float32_matmul_precision(precision)
        torch.set_default_dtype(dtype)


class PassThrough(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


def test_a_function_mode_left_on_the_stack_is_popped() -> None:
    state = guard.snapshot_state()
    mode = PassThrough()
    mode.__enter__()  # never exited
    try:
        with pytest.raises(Rejected) as info:
            guard.check_guards(state)
    finally:
        if guard.snapshot_state() != state:
            mode.__exit__(None, None, None)
    assert (info.value.check, info.value.detail) == ("global_state", "changed modes (restored)")
    assert guard.snapshot_state() == state


@pytest.mark.parametrize(
    ("owner", "name", "check", "shown"),
    [
        (time, "perf_counter_ns", "timer_patched", "time.perf_counter_ns"),
        (timing, "_perf_counter_ns", "timer_patched", "study.measure.timing._perf_counter_ns"),
        (
            F,
            "scaled_dot_product_attention",
            "baseline_patched",
            "torch.nn.functional.scaled_dot_product_attention",
        ),
        (runner, "copy_out", "harness_patched", "study.measure.runner.copy_out"),
        (runner, "_SDPA", "baseline_patched", "study.measure.runner._SDPA"),
        (guard, "snapshot_state", "harness_patched", "study.measure.guard.snapshot_state"),
    ],
)
def test_a_replaced_function_is_restored_and_reported(owner, name, check, shown) -> None:
    state = guard.snapshot_state()
    original = getattr(owner, name)
    setattr(owner, name, lambda *args, **kwargs: 0)
    try:
        with pytest.raises(Rejected) as info:
            guard.check_guards(state)
        assert info.value.check == check
        assert shown in info.value.detail and info.value.detail.endswith("(restored)")
        assert getattr(owner, name) is original
    finally:
        setattr(owner, name, original)


def test_a_patch_is_reported_before_a_state_change() -> None:
    state = guard.snapshot_state()
    original, threads = time.sleep, torch.get_num_threads()
    time.sleep = lambda seconds: None
    torch.set_num_threads(threads + 1)
    try:
        with pytest.raises(Rejected) as info:
            guard.check_guards(state)
        assert info.value.check == "timer_patched"
        assert time.sleep is original and torch.get_num_threads() == threads  # both restored
    finally:
        time.sleep = original
        torch.set_num_threads(threads)


def test_protect_guards_one_more_attribute() -> None:
    owner = types.SimpleNamespace(__name__="plugin_api", answer=lambda: 42)
    original = owner.answer
    guard.protect("harness_patched", owner, ["answer"])
    owner.answer = lambda: 0
    assert guard.restore_patches() == {"harness_patched": ["plugin_api.answer"]}
    assert owner.answer is original and owner.answer() == 42
    assert guard.restore_patches() == {}
