"""One candidate, start to finish, inside a worker: build -> gate -> paired timing -> result.

Runs in the worker process only. Returns a plain dict (it crosses a pipe):
status "ok" (checked and timed), "rejected" (ran, not correct: `rejected_by`) or "error"
(could not be built or run: `error`, one line).
"""

from __future__ import annotations

import time
import traceback
from typing import Any

import torch

import kernels
from kernels import Problem
from kernels.sdpa import sdpa_call
from study import gate, timing
from study.mutations import Applied


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}"[:300]


def _timing_buffers(problem: Problem, applied: Applied, seed: int, count: int) -> list[tuple]:
    return [
        applied.prepare_inputs(gate.make_inputs(problem, seed * 7919 + 101 + i, "normal"))
        for i in range(count)
    ]


def evaluate(task: dict[str, Any]) -> dict[str, Any]:
    """Build, check and time one candidate against the SDPA baseline."""
    problem = Problem.from_dict(task["problem"])
    spec = task["candidate"]
    bench = task["bench"]
    seed = int(task["seed"])
    result: dict[str, Any] = {"status": "error", "variant": spec["variant"]}
    registry = kernels.variants()
    if spec["variant"] not in registry:
        result["error"] = f"variant {spec['variant']} is not registered in the worker"
        return result
    variant = registry[spec["variant"]]
    applied = Applied(spec.get("mutations", {}), problem)
    torch.manual_seed(seed)
    try:
        started = time.perf_counter()
        with applied.context():
            built = variant.build(problem, **spec.get("params", {}))
        result["build_s"] = round(time.perf_counter() - started, 4)
        run = applied.wrap(built)
    except Exception as exc:
        result["error"] = f"build failed: {one_line(exc)}"
        result["traceback"] = traceback.format_exc(limit=6)
        return result

    def run_in_context(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> Any:
        with applied.context():
            return run(q, k, v)

    def plain_baseline(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return sdpa_call(problem, q, k, v)

    baseline = applied.wrap_baseline(plain_baseline)

    try:
        report = gate.run_gate(
            problem, run_in_context, applied.prepare_inputs, seed, int(bench["check_sets"])
        )
    except gate.Rejected as rejected:
        result.update(status="rejected", rejected_by=rejected.check, detail=rejected.detail)
        return result
    except Exception as exc:
        result["error"] = f"run failed: {one_line(exc)}"
        result["traceback"] = traceback.format_exc(limit=6)
        return result

    try:
        buffers = _timing_buffers(problem, applied, seed, int(bench["buffers"]))
        cand, base = timing.measure_pair(problem, run_in_context, baseline, buffers, bench)
    except Exception as exc:
        result["error"] = f"timing failed: {one_line(exc)}"
        result["traceback"] = traceback.format_exc(limit=6)
        return result

    result.update(
        status="ok",
        latency_us=cand.median_us,
        latency_iqr_us=cand.iqr_us,
        latency_min_us=cand.min_us,
        reps=cand.reps,
        baseline_latency_us=base.median_us,
        baseline_latency_iqr_us=base.iqr_us,
        speedup=base.median_us / cand.median_us,
        tflops=problem.flops() / (cand.median_us * 1e-6) / 1e12,
        rel_err=report.rel_err,
        max_err=report.max_err,
        err_bound=report.bound,
    )
    return result


def supports(problem_dict: dict[str, Any], names: list[str]) -> dict[str, str | None]:
    """Ask each variant, on this device, whether it can run the problem."""
    problem = Problem.from_dict(problem_dict)
    registry = kernels.variants()
    return {
        name: (registry[name].supports(problem) if name in registry else "not registered")
        for name in names
    }
