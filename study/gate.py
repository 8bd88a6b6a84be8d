"""The correctness gate: a candidate is timed only after it computes attention, honestly.

Per trial: several fresh random input sets (a new seed per trial, several distributions, never
zeros), the float64 plain-math reference, and a FlashAttention-style bound: the candidate's
largest error may be at most twice that of a same-dtype plain PyTorch implementation, plus a tiny
atol. Exact shape, dtype and device; NaN/Inf only where the reference has them; inputs unchanged;
the memory an output could be carved from poisoned first; global state (SDPA flags, TF32, matmul
precision, threads, default dtype, determinism) unchanged; earlier outputs unchanged by later
calls. A rejection names its check (`rejected_by`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from kernels import Problem, plain_attention, reference_attention

DISTRIBUTIONS = ("normal", "uniform", "peaked", "offset")
ATOL = {torch.float16: 1e-5, torch.bfloat16: 1e-5, torch.float32: 1e-6, torch.float64: 1e-9}


class Rejected(Exception):
    """The candidate ran but is not correct; `check` names the failed check."""

    def __init__(self, check: str, detail: str) -> None:
        super().__init__(f"{check}: {detail}")
        self.check = check
        self.detail = detail


@dataclass
class GateReport:
    max_err: float = 0.0
    bound: float = 0.0
    rel_err: float = 0.0
    sets: int = 0
    distributions: list[str] = field(default_factory=list)


def make_inputs(
    problem: Problem, seed: int, distribution: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fresh random q, k, v (B,H,S,D contiguous) drawn on the CPU, then moved: same on any device.

    normal: N(0,1). uniform: U(-1,1) (where "mean of V" cheats thrive under loose bounds).
    peaked: large q/k so that softmax is nearly one-hot. offset: keys with a shared offset and
    values far from zero mean (where missing max-subtraction and dropped keys show).
    """
    gen = torch.Generator().manual_seed(seed)

    def draw(shape: tuple[int, ...]) -> torch.Tensor:
        return torch.randn(shape, generator=gen, dtype=torch.float32)

    q, k, v = draw(problem.q_shape()), draw(problem.kv_shape()), draw(problem.kv_shape())
    if distribution == "uniform":
        q, k, v = (torch.rand(t.shape, generator=gen) * 2 - 1 for t in (q, k, v))
    elif distribution == "peaked":
        q, k = q * 3.0, k * 3.0
    elif distribution == "offset":
        k = k + 2.0
        v = v * 2.0 + 3.0
    elif distribution != "normal":
        raise ValueError(f"unknown distribution {distribution!r}")
    return tuple(t.to(problem.dtype).to(problem.device) for t in (q, k, v))  # type: ignore[return-value]


# -- global state guard -----------------------------------------------------------------------
def _state_items() -> dict[str, tuple[Callable[[], Any], Callable[[Any], None]]]:
    items: dict[str, tuple[Callable[[], Any], Callable[[Any], None]]] = {
        "num_threads": (torch.get_num_threads, torch.set_num_threads),
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
    }
    cuda = torch.backends.cuda
    for flag in ("flash", "mem_efficient", "math", "cudnn"):
        getter = getattr(cuda, f"{flag}_sdp_enabled", None)
        setter = getattr(cuda, f"enable_{flag}_sdp", None)
        if getter and setter:
            items[f"sdp_{flag}"] = (getter, setter)
    items["cuda_matmul_tf32"] = (
        lambda: torch.backends.cuda.matmul.allow_tf32,
        lambda on: setattr(torch.backends.cuda.matmul, "allow_tf32", on),
    )
    items["cuda_fp16_reduced_precision"] = (
        lambda: torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction,
        lambda on: setattr(
            torch.backends.cuda.matmul, "allow_fp16_reduced_precision_reduction", on
        ),
    )
    items["cudnn_tf32"] = (
        lambda: torch.backends.cudnn.allow_tf32,
        lambda on: setattr(torch.backends.cudnn, "allow_tf32", on),
    )
    items["cudnn_benchmark"] = (
        lambda: torch.backends.cudnn.benchmark,
        lambda on: setattr(torch.backends.cudnn, "benchmark", on),
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
            put(value)
    return changed


# -- checks -----------------------------------------------------------------------------------
def poison_free_memory(problem: Problem, nbytes: int) -> None:
    """Fill soon-to-be-reused memory with NaN and free it: stale memory cannot pass for output."""
    count = max(nbytes // 4, 1)
    if problem.is_cuda:
        junk = torch.full((count,), float("nan"), device=problem.device)
        del junk
    else:
        junk = torch.full((count,), float("nan"))
        del junk


def synchronize(problem: Problem) -> None:
    if problem.is_cuda:
        torch.cuda.synchronize(problem.device)


def check_output(
    problem: Problem, out: Any, ref: torch.Tensor, plain_err: float
) -> tuple[float, float]:
    """Shape, dtype, device, NaN agreement and the error bound; returns (max_err, bound)."""
    if not isinstance(out, torch.Tensor):
        raise Rejected("type", f"returned {type(out).__name__}, not a tensor")
    if tuple(out.shape) != problem.q_shape():
        raise Rejected("shape", f"shape {tuple(out.shape)} != {problem.q_shape()}")
    if out.dtype != problem.dtype:
        raise Rejected("dtype", f"dtype {out.dtype} != {problem.dtype}")
    if out.device != torch.device(problem.device):
        raise Rejected("device", f"device {out.device} != {problem.device}")
    if type(out) is not torch.Tensor:
        raise Rejected("type", f"returned a {type(out).__name__} subclass, not a plain tensor")
    out64 = out.detach().to(torch.float64)
    ref_finite = torch.isfinite(ref)
    if not torch.equal(torch.isfinite(out64), ref_finite):
        bad = int((torch.isfinite(out64) != ref_finite).sum())
        raise Rejected("nan", f"{bad} elements are NaN/Inf where the reference is not (or back)")
    err = float((out64 - ref).abs().max()) if out.numel() else 0.0
    bound = 2.0 * plain_err + ATOL[problem.dtype]
    if not err <= bound:
        raise Rejected("tolerance", f"max error {err:.3e} > bound {bound:.3e} (2x plain + atol)")
    return err, bound


def run_gate(
    problem: Problem,
    run: Callable[..., Any],
    prepare: Callable[[tuple[torch.Tensor, ...]], tuple[torch.Tensor, ...]],
    seed: int,
    sets: int,
) -> GateReport:
    """Run every check on `sets` fresh input sets; raise Rejected on the first failure."""
    report = GateReport()
    kept: list[tuple[torch.Tensor, torch.Tensor]] = []  # (returned tensor, copy of it)
    out_bytes = torch.finfo(problem.dtype).bits // 8 * int(torch.Size(problem.q_shape()).numel())
    for index in range(sets):
        distribution = DISTRIBUTIONS[index % len(DISTRIBUTIONS)]
        q, k, v = prepare(make_inputs(problem, seed * 1009 + index, distribution))
        originals = [t.clone() for t in (q, k, v)]
        ref = reference_attention(q, k, v, problem.causal, problem.scale)
        plain = plain_attention(q, k, v, problem.causal, problem.scale)
        plain_err = float((plain.to(torch.float64) - ref).abs().max())
        del plain
        poison_free_memory(problem, out_bytes)
        state = snapshot_state()
        out = run(q, k, v)
        synchronize(problem)
        changed = restore_state(state)
        if changed:
            raise Rejected("global_state", f"changed {', '.join(changed)} (restored)")
        for name, before, after in zip("qkv", originals, (q, k, v), strict=True):
            if not torch.equal(before, after):
                raise Rejected("inputs_modified", f"{name} was written to")
        err, bound = check_output(problem, out, ref, plain_err)
        scale = float(ref.abs().max()) or 1.0
        report.max_err = max(report.max_err, err)
        report.bound = max(report.bound, bound)
        report.rel_err = max(report.rel_err, err / scale)
        report.sets += 1
        report.distributions.append(distribution)
        kept.append((out, out.detach().clone()))
    # Work finished late, outputs cached by address or shape, or aliased across calls: the first
    # results must still hold what they held once later calls have run and time has passed.
    time.sleep(0.01)
    synchronize(problem)
    for number, (returned, copy) in enumerate(kept):
        if not torch.equal(returned, copy) and not (
            torch.isnan(returned).any() and torch.equal(returned.isnan(), copy.isnan())
        ):
            raise Rejected("output_changed", f"output of check {number} changed after later calls")
    ptrs = [returned.data_ptr() for returned, _ in kept]
    if len(set(ptrs)) < len(ptrs):
        raise Rejected("output_aliased", "two calls returned the same memory")
    return report
