"""The guard: what a candidate may not change, restored and reported after every call.

It runs in the runner processes (study/measure/runner.py), beside the candidate: hygiene that
names a candidate's tampering and keeps one trial's changes out of the next built-in trial, not
the security of the verdict, which the judge decides in a process of its own (a candidate that
disables the guard gains nothing from it).

Two kinds of tampering slow the baseline or fool the checker without touching the output:

- global state (`snapshot_state` / `restore_state`): SDPA backend flags, TF32, matmul precision,
  threads, default dtype and device, determinism, denormals, torch function/dispatch modes;
  a change is rejected as `global_state`.
- replaced attributes (`capture_originals` / `restore_patches`): the clocks (`timer_patched`),
  the SDPA baseline (`baseline_patched`), the reference and the checker itself
  (`harness_patched`). The originals are captured when this module is imported, before any
  plugin loads; the runner adds its own functions with `protect`.

`check_guards` restores both, then raises `Rejected` naming what had changed.
"""

from __future__ import annotations

import contextlib
import inspect
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F

import kernels
import kernels.builtin.sdpa
from study.measure import inputs, pairing, timing

# The module that defines the reference functions (private to kernels): guarded there as well,
# since `kernels.reference_attention` is only a second name for them.
_REFERENCE_MODULE = inspect.getmodule(kernels.reference_attention)


class Rejected(Exception):
    """The candidate ran but is not correct; `check` names the failed check."""

    def __init__(self, check: str, detail: str) -> None:
        super().__init__(f"{check}: {detail}")
        self.check = check
        self.detail = detail


# -- global state -------------------------------------------------------------------------------
def _flush_denormal_on() -> bool:
    tiny = torch.tensor([1e-39], dtype=torch.float32)
    return bool(float(tiny * torch.tensor([1.0])) == 0.0)


def _mode_depths() -> tuple[int, int]:
    from torch.overrides import _get_current_function_mode_stack
    from torch.utils._python_dispatch import _get_current_dispatch_mode_stack

    return len(_get_current_function_mode_stack()), len(_get_current_dispatch_mode_stack())


def _pop_modes(depths: tuple[int, int]) -> None:
    while _mode_depths()[0] > depths[0]:
        torch._C._pop_torch_function_stack()
    while _mode_depths()[1] > depths[1]:
        torch._C._pop_torch_dispatch_stack()


def _state_items() -> dict[str, tuple[Callable[[], Any], Callable[[Any], None]]]:
    items: dict[str, tuple[Callable[[], Any], Callable[[Any], None]]] = {
        "num_threads": (torch.get_num_threads, torch.set_num_threads),
        "num_interop_threads": (torch.get_num_interop_threads, lambda n: None),
        "default_dtype": (torch.get_default_dtype, torch.set_default_dtype),
        "float32_matmul_precision": (
            torch.get_float32_matmul_precision,
            torch.set_float32_matmul_precision,
        ),
        "deterministic": (
            torch.are_deterministic_algorithms_enabled,
            lambda on: torch.use_deterministic_algorithms(on),
        ),
        "grad_enabled": (torch.is_grad_enabled, torch.set_grad_enabled),
        "flush_denormal": (_flush_denormal_on, torch.set_flush_denormal),
        "mkldnn_enabled": (
            lambda: torch.backends.mkldnn.enabled,
            lambda on: setattr(torch.backends.mkldnn, "enabled", on),
        ),
        "modes": (_mode_depths, _pop_modes),
    }
    if hasattr(torch, "get_default_device"):
        items["default_device"] = (torch.get_default_device, torch.set_default_device)
    cuda = torch.backends.cuda
    for flag in ("flash", "mem_efficient", "math", "cudnn"):
        getter = getattr(cuda, f"{flag}_sdp_enabled", None)
        setter = getattr(cuda, f"enable_{flag}_sdp", None)
        if getter and setter:
            items[f"sdp_{flag}"] = (getter, setter)
    if hasattr(cuda, "fp16_bf16_reduction_math_sdp_allowed"):
        items["sdp_math_reduced_precision"] = (
            cuda.fp16_bf16_reduction_math_sdp_allowed,
            cuda.allow_fp16_bf16_reduction_math_sdp,
        )
    matmul = torch.backends.cuda.matmul
    for name in (
        "allow_tf32",
        "allow_fp16_reduced_precision_reduction",
        "allow_bf16_reduced_precision_reduction",
    ):
        if hasattr(matmul, name):
            items[f"cuda_matmul_{name}"] = (
                lambda name=name: getattr(torch.backends.cuda.matmul, name),
                lambda on, name=name: setattr(torch.backends.cuda.matmul, name, on),
            )
    for name in ("allow_tf32", "benchmark", "deterministic", "enabled"):
        items[f"cudnn_{name}"] = (
            lambda name=name: getattr(torch.backends.cudnn, name),
            lambda on, name=name: setattr(torch.backends.cudnn, name, on),
        )
    return items


def snapshot_state() -> dict[str, Any]:
    return {name: get() for name, (get, _) in _state_items().items()}


def restore_state(saved: dict[str, Any]) -> list[str]:
    """Put every changed item back; return the names that had changed."""
    changed = []
    items = _state_items()
    for name, value in saved.items():
        get, put = items[name]
        if get() != value:
            changed.append(name)
            with contextlib.suppress(Exception):  # restore what can be, report it all
                put(value)
    return changed


# -- patches: clocks, the baseline and the checker hold private references ----------------------
def _guarded() -> dict[str, list[tuple[Any, str]]]:
    cuda_event = torch.cuda.Event
    this = sys.modules[__name__]
    return {
        "timer_patched": [
            *((time, n) for n in ("perf_counter_ns", "perf_counter", "monotonic", "monotonic_ns")),
            *((time, n) for n in ("time", "time_ns", "process_time_ns", "sleep")),
            (torch.cuda, "Event"),
            (torch.cuda, "synchronize"),
            (torch.cuda, "current_stream"),
            *((cuda_event, n) for n in ("record", "elapsed_time", "synchronize", "query")),
            *((timing, n) for n in ("_perf_counter_ns", "_perf_counter", "_monotonic_ns")),
            *((timing, n) for n in ("_CudaEvent", "_cuda_synchronize", "measure_pair", "Stats")),
            (timing.Timer, "time_call"),
            (timing.Timer, "time_block"),
            (timing.Timer, "wake"),
            (timing.Pair, "fields"),
            *((pairing, n) for n in ("bootstrap_ci", "paired_median", "quiet_ratios")),
            *((timing, n) for n in ("bootstrap_ci", "paired_median")),
            (timing.Stats, "of"),
        ],
        "baseline_patched": [
            (F, "scaled_dot_product_attention"),
            (torch._C._nn, "scaled_dot_product_attention"),
            (kernels.builtin.sdpa, "sdpa_call"),
            (kernels.builtin.sdpa, "F"),
            (torch.nn.attention, "sdpa_kernel"),
        ],
        "harness_patched": [
            (kernels, "reference_attention"),
            (kernels, "plain_attention"),
            (_REFERENCE_MODULE, "reference_attention"),
            (_REFERENCE_MODULE, "plain_attention"),
            (torch, "equal"),
            (torch, "isfinite"),
            (torch, "isnan"),
            (torch.Tensor, "to"),
            (torch.Tensor, "clone"),
            (torch.Tensor, "abs"),
            (torch.Tensor, "max"),
            (inputs, "make_inputs"),
            *((this, n) for n in ("Rejected", "check_guards", "snapshot_state", "restore_state")),
            (this, "_state_items"),
        ],
    }


def _lookup(owner: Any, name: str) -> Any:
    return inspect.getattr_static(owner, name, None)


_PROTECTED: dict[str, list[tuple[Any, str]]] = {}  # added by `protect`
_ORIGINALS: dict[str, list[tuple[Any, str, Any]]] = {}


def capture_originals() -> None:
    """Remember the objects the guard protects (called at import, before any plugin loads)."""
    _ORIGINALS.clear()
    for check, entries in _guarded().items():
        entries = entries + _PROTECTED.get(check, [])
        _ORIGINALS[check] = [(owner, name, _lookup(owner, name)) for owner, name in entries]


def protect(check: str, owner: Any, names: Iterable[str]) -> None:
    """Guard `owner.<name>` for each name too (as it is now), reported as `check` if replaced.

    For modules that cannot be named here without an import cycle: the gate's own checks.
    """
    entries = [(owner, name) for name in names]
    _PROTECTED.setdefault(check, []).extend(entries)
    _ORIGINALS.setdefault(check, []).extend((o, n, _lookup(o, n)) for o, n in entries)


def restore_patches() -> dict[str, list[str]]:
    """Put every replaced attribute back; return {check: [names]} of what had been replaced."""
    found: dict[str, list[str]] = {}
    for check, entries in _ORIGINALS.items():
        for owner, name, original in entries:
            if _lookup(owner, name) is not original:
                found.setdefault(check, []).append(f"{getattr(owner, '__name__', owner)}.{name}")
                setattr(owner, name, original)
    return found


def check_guards(state: dict[str, Any]) -> None:
    """Raise Rejected (after restoring) if a guarded attribute or the global state changed."""
    patched = restore_patches()
    changed = restore_state(state)
    for check in ("timer_patched", "baseline_patched", "harness_patched"):
        if check in patched:
            raise Rejected(check, f"replaced {', '.join(patched[check])} (restored)")
    if changed:
        raise Rejected("global_state", f"changed {', '.join(changed)} (restored)")


capture_originals()  # last: every guarded function of this module exists by now
