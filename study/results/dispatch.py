"""Which backend SDPA's default dispatch picked for a problem: by torch profiler, and by timing.

The profiler names the ATen op the dispatcher called (the backend), on the CPU and on a GPU
alike; on a GPU the device kernels it launched are recorded beside it. The timing answer is the
explicit backend whose latency is nearest the default's in the run's SDPA panel. Both go into
report.md (study/results/report.py) as evidence, never as a guess.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Any

# The ATen op the dispatcher called names the backend, on the CPU and on a GPU alike; on a GPU
# the device kernels it launched are recorded beside it (their names change between releases).
SDPA_OPS = {
    "aten::_scaled_dot_product_flash_attention_for_cpu": "flash",
    "aten::_scaled_dot_product_flash_attention": "flash",
    "aten::_scaled_dot_product_efficient_attention": "efficient",
    "aten::_scaled_dot_product_cudnn_attention": "cudnn",
    "aten::_scaled_dot_product_attention_math": "math",
    "aten::_scaled_dot_product_attention_math_for_mps": "math",
    "aten::_scaled_dot_product_fused_attention_overrideable": "overrideable",
}
# Checked in order: cuDNN's fused kernels contain "flash" in their names too.
KERNEL_HINTS = (
    ("cudnn", "cudnn"),
    ("sdpa", "cudnn"),
    ("pytorch_flash", "flash"),
    ("flash_fwd", "flash"),
    ("memeff", "efficient"),
    ("fmha_cutlass", "efficient"),
    ("attentionkernel", "efficient"),
)


def backend_from_kernels(kernel_names: list[str]) -> str | None:
    for name in kernel_names:
        low = name.lower()
        for hint, backend in KERNEL_HINTS:
            if hint in low:
                return backend
    return None


@contextlib.contextmanager
def _quiet_fds() -> Iterator[None]:
    """Silence this process's stdout/stderr file descriptors (the profiler's C++ chatter)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, devnull):
            os.close(fd)


def profile_default_sdpa(problem_dict: dict[str, Any]) -> dict[str, Any]:
    """Run SDPA's default dispatch under torch.profiler on the problem's device."""
    with _quiet_fds():
        return _profile_default_sdpa(problem_dict)


def _profile_default_sdpa(problem_dict: dict[str, Any]) -> dict[str, Any]:
    import torch
    from torch.profiler import ProfilerActivity, profile

    from kernels import Problem
    from kernels.builtin.sdpa import sdpa_call

    problem = Problem.from_dict(problem_dict)
    if problem.is_cuda:
        torch.cuda.set_device(torch.device(problem.device))
    gen = torch.Generator(device="cpu").manual_seed(0)
    q = torch.randn(problem.q_shape(), generator=gen, dtype=torch.float32)
    k = torch.randn(problem.kv_shape(), generator=gen, dtype=torch.float32)
    v = torch.randn(problem.kv_shape(), generator=gen, dtype=torch.float32)
    q, k, v = (t.to(device=problem.device, dtype=problem.dtype) for t in (q, k, v))
    for _ in range(2):  # warm-up: lazy initialisation must not show in the profile
        sdpa_call(problem, q, k, v)
    activities = [ProfilerActivity.CPU]
    if problem.is_cuda:
        torch.cuda.synchronize()
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        sdpa_call(problem, q, k, v)
        if problem.is_cuda:
            torch.cuda.synchronize()
    ops, kernels_seen = [], []
    for event in prof.key_averages():
        if event.key in SDPA_OPS:
            ops.append(event.key)
        elif problem.is_cuda and str(event.device_type).endswith("CUDA"):
            device_us = getattr(event, "device_time_total", None)
            if device_us is None:
                device_us = getattr(event, "cuda_time_total", 0.0)
            kernels_seen.append((float(device_us or 0.0), event.key))
    kernels_seen.sort(reverse=True)
    kernel_names = [name for _, name in kernels_seen[:5]]
    backend = SDPA_OPS[ops[0]] if ops else backend_from_kernels(kernel_names)
    return {
        "backend": backend,
        "ops": ops,
        "kernels": kernel_names,
        "torch": torch.__version__,
    }


def sdpa_default_pick(problem: Any, timeout_s: float = 300.0) -> dict[str, Any]:
    """Which backend the default dispatch picked, by profiler.

    On the CPU in this process (the dispatch depends on the problem only, and a fresh process
    costs seconds); on a GPU in a fresh spawned process, so that this one never holds a CUDA
    context.
    """
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    try:
        if not problem.is_cuda:
            return profile_default_sdpa(problem.to_dict())
        with ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as pool:
            return pool.submit(profile_default_sdpa, problem.to_dict()).result(timeout=timeout_s)
    except Exception as exc:
        return {"backend": None, "error": f"{type(exc).__name__}: {exc}".splitlines()[0]}


def closest_by_timing(panel: list[dict[str, Any]]) -> str | None:
    """The explicit backend whose latency is nearest the default's in the same panel rows."""
    import math

    timed = [
        r
        for r in panel
        if r.get("status") == "ok" and r.get("speedup") and r["variant"].startswith("sdpa_")
    ]
    if not timed:
        return None
    best = min(timed, key=lambda r: abs(math.log(r["speedup"])))
    return best["variant"].removeprefix("sdpa_")
