"""The parts of `l2=kv` (kernels.mutations.L2): K and V in one allocation, under a persisting L2
access-policy window set through cuda-python around each call.

torch exposes no stream access-policy window nor the persisting-L2 carve-out, so these call the
CUDA runtime bindings of cuda-python directly. They are kept apart from the mutations so that the
mutations read as mechanisms and this module as the one place that knows the bindings' API (which
changed names between releases: `cuda.cudart` and `cudaStreamAttr*` before, `cuda.bindings.runtime`
and `cudaLaunchAttribute*` now). cuda-python is imported on first use only: the module imports
without it, and `cudart()` raises ImportError where it is missing.

Device-wide calls (the persisting carve-out, resetting persisting lines) act on the runtime's
current device, which need not be the candidate's `cuda:N`: each one runs on the device it is
given (`on_device`: set for the call, the previous one restored). Persisting lines outlive the
call that made them and the timing's L2 flush (an ordinary write cannot evict them), so the
timer resets them before each flush (`persisting_reset`): otherwise K and V would stay in L2 for
the next call, the SDPA baseline's included, while everything else starts cold.
"""

from __future__ import annotations

import contextlib
import functools
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import torch

from kernels._problem import Problem, dense_non_overlapping

Runner = Callable[..., torch.Tensor]


def cudart() -> Any:
    """The CUDA runtime bindings of cuda-python (`cuda.bindings.runtime`, older `cuda.cudart`)."""
    try:
        from cuda.bindings import runtime  # type: ignore[import-not-found]

        return runtime
    except ImportError:
        from cuda import cudart as runtime  # type: ignore[import-not-found,no-redef]

        return runtime


def _check(result: Any, what: str) -> Any:
    """cuda-python returns (err, *values): raise on an error, return the values."""
    if not isinstance(result, tuple):
        result = (result,)
    err, *values = result
    if int(err) != 0:
        raise RuntimeError(f"{what} failed: {err}")
    return values[0] if len(values) == 1 else values


def _window_attr_id(rt: Any) -> Any:
    ids = getattr(rt, "cudaStreamAttrID", None) or rt.cudaLaunchAttributeID
    found = getattr(ids, "cudaStreamAttributeAccessPolicyWindow", None)
    return found if found is not None else ids.cudaLaunchAttributeAccessPolicyWindow


def _attr_value(rt: Any) -> Any:
    cls = getattr(rt, "cudaStreamAttrValue", None) or rt.cudaLaunchAttributeValue
    return cls()


def device_index(device: torch.device | str | int) -> int:
    """The CUDA device index of `cuda:N` (N), of `cuda` (torch's current device), or of N."""
    if isinstance(device, int):
        return device
    dev = torch.device(device)
    if dev.type != "cuda":
        raise ValueError(f"{device} is not a CUDA device")
    return dev.index if dev.index is not None else torch.cuda.current_device()


@contextlib.contextmanager
def on_device(device: int) -> Iterator[Any]:
    """The runtime bindings with `device` current for the block; the previous device after."""
    rt = cudart()
    before = int(_check(rt.cudaGetDevice(), "cudaGetDevice"))
    if before != device:
        _check(rt.cudaSetDevice(device), "cudaSetDevice")
    try:
        yield rt
    finally:
        if before != device:
            _check(rt.cudaSetDevice(before), "cudaSetDevice")


def stream_window(stream: torch.cuda.Stream | None = None) -> tuple[int, int]:
    """(base_ptr, num_bytes) of the access-policy window on `stream` (default: current)."""
    rt = cudart()
    handle = (stream or torch.cuda.current_stream()).cuda_stream
    value = _check(rt.cudaStreamGetAttribute(handle, _window_attr_id(rt)), "cudaStreamGetAttribute")
    window = value.accessPolicyWindow
    return int(window.base_ptr), int(window.num_bytes)


def set_stream_window(base_ptr: int, num_bytes: int, stream: Any = None) -> None:
    """Set (num_bytes > 0: persisting hits, streaming misses) or clear (0) the window."""
    rt = cudart()
    handle = (stream or torch.cuda.current_stream()).cuda_stream
    value = _attr_value(rt)
    window = value.accessPolicyWindow
    window.base_ptr = base_ptr if num_bytes else 0
    window.num_bytes = num_bytes
    window.hitRatio = 1.0 if num_bytes else 0.0
    window.hitProp = rt.cudaAccessProperty.cudaAccessPropertyPersisting
    window.missProp = rt.cudaAccessProperty.cudaAccessPropertyStreaming
    if not num_bytes:
        window.hitProp = rt.cudaAccessProperty.cudaAccessPropertyNormal
        window.missProp = rt.cudaAccessProperty.cudaAccessPropertyNormal
    _check(rt.cudaStreamSetAttribute(handle, _window_attr_id(rt), value), "cudaStreamSetAttribute")


def persisting_limit(device: int) -> int:
    """The persisting-L2 carve-out of `device`, bytes."""
    with on_device(device) as rt:
        limit = rt.cudaDeviceGetLimit(rt.cudaLimit.cudaLimitPersistingL2CacheSize)
        return int(_check(limit, "cudaDeviceGetLimit"))


def set_persisting_limit(nbytes: int, device: int) -> None:
    with on_device(device) as rt:
        _check(
            rt.cudaDeviceSetLimit(rt.cudaLimit.cudaLimitPersistingL2CacheSize, int(nbytes)),
            "cudaDeviceSetLimit",
        )


def reset_persisting_lines(device: int) -> None:
    """Every persisting L2 line of `device`'s context back to normal (evictable) status."""
    with on_device(device) as rt:
        _check(rt.cudaCtxResetPersistingL2Cache(), "cudaCtxResetPersistingL2Cache")


def _l2_limits(device: int) -> tuple[int, int]:
    """(persistingL2CacheMaxSize, accessPolicyMaxWindowSize) of `device`."""
    rt = cudart()
    prop = _check(rt.cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
    return int(prop.persistingL2CacheMaxSize), int(prop.accessPolicyMaxWindowSize)


def persisting_reset(device: torch.device | str) -> Callable[[], None] | None:
    """A function that resets the persisting L2 lines of `device` (call it where the device is
    idle: the reset is not stream-ordered), or None where no line can persist there (no CUDA,
    no cuda-python, or a device without a persisting carve-out, e.g. under MIG)."""
    if torch.device(device).type != "cuda":
        return None
    try:
        index = device_index(device)
        if _l2_limits(index)[0] <= 0:
            return None
    except (ImportError, RuntimeError):
        return None
    return functools.partial(reset_persisting_lines, index)


def kv_span(k: torch.Tensor, v: torch.Tensor) -> tuple[int, int]:
    """(base, bytes) of the smallest range covering K and V (one range: l2's prepare_inputs
    places them next to each other); only K when they lie far apart."""
    k_bytes, v_bytes = k.numel() * k.element_size(), v.numel() * v.element_size()
    lo = min(k.data_ptr(), v.data_ptr())
    hi = max(k.data_ptr() + k_bytes, v.data_ptr() + v_bytes)
    if hi - lo > k_bytes + v_bytes + 4096:
        return k.data_ptr(), k_bytes
    return lo, hi - lo


def in_one_allocation(k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """K and V copied into two halves of one allocation, with their strides kept."""
    n = k.numel()
    dense = dense_non_overlapping(k) and dense_non_overlapping(v)
    if not dense or v.numel() != n or v.dtype != k.dtype:
        return k, v  # not dense: leave them where they are
    flat = torch.empty(2 * n, dtype=k.dtype, device=k.device)
    k2 = flat.as_strided(k.shape, k.stride(), 0)
    v2 = flat.as_strided(v.shape, v.stride(), n)
    k2.copy_(k)
    v2.copy_(v)
    return k2, v2


class L2Runner:
    """Sets a persisting L2 access-policy window over K and V on the device's current stream
    around each call, and clears it after. The carve-out of the problem's device (`cuda:N`, not
    the runtime's current one) is raised once when the runner is made and restored (with the
    persisting lines reset) when the runner is freed."""

    def __init__(self, run: Runner, problem: Problem) -> None:
        self.run = run
        self.device = device_index(problem.device)
        self.max_persist, self.max_window = _l2_limits(self.device)
        before = persisting_limit(self.device)
        wanted = min(self.max_persist, 2 * problem.min_bytes())
        set_persisting_limit(max(before, wanted), self.device)
        self.finalizer = weakref.finalize(self, _restore_l2, before, self.device)
        self.windows: list[tuple[int, int]] = []  # what was set, for tests and reports

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        base, nbytes = kv_span(k, v)
        nbytes = min(nbytes, self.max_window)
        stream = torch.cuda.current_stream(self.device)
        set_stream_window(base, nbytes, stream)
        try:
            self.windows.append(stream_window(stream))
            return self.run(q, k, v)
        finally:
            set_stream_window(0, 0, stream)


def _restore_l2(limit: int, device: int) -> None:
    with contextlib.suppress(Exception):
        set_persisting_limit(limit, device)
        reset_persisting_lines(device)
