"""One candidate, start to finish, inside a worker: build -> gate -> paired timing -> result.

Runs in the worker process only. Returns a plain dict (it crosses a pipe):
status "ok" (checked and timed), "rejected" (ran, not correct: `rejected_by`) or "error"
(could not be built or run: `error`, one line).

The guards of study/measure/guard.py run after the build, after every gated call and after every
timed call: a candidate that patches a clock, the baseline or the checker, or changes global state,
is restored and rejected before the baseline runs next. The baseline calls SDPA through a private
reference taken at import, so a patched `F.scaled_dot_product_attention` cannot slow it.
Timed calls are spot-checked: the repetitions in `SPOT_REPS` refill its input buffer in place
with new values first, and the candidate's output of that timed call (and of one later call on
an unchanged buffer) must match the reference
(`rejected_by: timed_output`); a candidate that behaves in the gate and cheats once timed (a
cache by address, all the work batched into one call, a side thread) is caught there.
Candidates whose mutation reuses output memory (`out=prealloc`, `graph=on`) are gated through
`Applied.wrap_for_gate` (fresh memory per call), and their timed outputs are re-read before the
next call on the same buffers.
"""

from __future__ import annotations

import threading
import time
import traceback
from typing import Any

import torch

import kernels
from kernels import Problem
from kernels.mutations import Applied
from study.errors import one_line
from study.measure import gate, guard, inputs, timing
from study.measure.guard import Rejected

# Private reference to the SDPA baseline, taken before any plugin is imported.
_SDPA = torch._C._nn.scaled_dot_product_attention
# The worker's global state before any candidate ran: every trial starts from it, so that a
# candidate that changes state after its own checks (a late thread) cannot hide the next
# candidate's change, nor slow the next baseline.
_PRISTINE_STATE = guard.snapshot_state()
SPOT_REPS = (0, 4, 8, 16, 32, 64, 128, 256, 512)  # refilled and checked (and 2 reps later)
SPOT_KEEP = 4  # spot-checked timed outputs kept to be read again at the end
# per repetition, added to the refill values: 2**-6 outgrows the bf16/fp16 spacing of |x| < 4,
# so nearly every element differs from every earlier repetition's in any dtype
REFILL_SHIFT = 2.0**-6
LATE_THREAD_WAIT_S = 0.3  # how long threads started during a trial may take to finish


def _refill_rep(rep: int) -> bool:
    return rep in SPOT_REPS


def baseline_call(problem: Problem, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> Any:
    """Default SDPA on the problem's mask and scale (what kernels.builtin.sdpa.sdpa_call does)."""
    return _SDPA(q, k, v, is_causal=problem.causal, scale=problem.scale, enable_gqa=problem.gqa)


class SpotCheck:
    """`before_rep`/`on_output` hooks for timing.measure_pair (see the module docstring)."""

    def __init__(self, problem: Problem, buffers: list[tuple], applied: Applied, seed: int) -> None:
        self.problem = problem
        self.buffers = buffers
        self.applied = applied
        self.seed = seed
        self.state = guard.snapshot_state()
        self.pending: tuple[int, torch.Tensor, float] | None = None
        self.refs: dict[int, tuple[torch.Tensor, float]] = {}
        self.gen = torch.Generator(device=problem.device).manual_seed(seed + 12_345)
        self.kept: list[tuple[torch.Tensor, torch.Tensor, int, int]] = []
        self.checked = 0
        self.sources: dict[tuple[int, int], torch.Tensor] = {}

    def _fresh_source(self, position: int, which: int) -> torch.Tensor:
        """One of two random tensors shaped like input `position`, drawn on first use."""
        key = (position, which)
        if key not in self.sources:
            like = self.buffers[0][position]
            self.sources[key] = torch.randn(like.shape, generator=self.gen, device=like.device).to(
                like.dtype
            )
        return self.sources[key]

    def _reread(self, index: int | None) -> None:
        """Kept timed outputs must still hold what they returned (late or overwritten work).

        Where a mutation reuses output memory per input buffer, an output may only be read
        until the next call on its buffer: those are re-read just before that call.
        """
        keep = []
        for out, early, rep, buffer in self.kept:
            if index is None or buffer == index:
                if not gate.same_values(out.detach(), early):
                    raise Rejected(
                        "timed_output", f"timed repetition {rep}: output changed after it returned"
                    )
            else:
                keep.append((out, early, rep, buffer))
        self.kept = keep

    def before_rep(self, rep: int, index: int) -> None:
        """At SPOT_REPS: refill this buffer in place and check the output (rep 0, 4, 8, 16,
        ...); two reps later, check again without a refill (rep 2, 6, 10, 18...): a candidate that
        answers honestly only when it sees its inputs change is caught on the unchanged ones.
        The other reps refill with fresh normal values, unchecked."""
        if self.applied.reuses_output:
            gate.synchronize(self.problem)
            self._reread(index)
        phase = 0 if _refill_rep(rep) else 2 if rep >= 2 and _refill_rep(rep - 2) else 1
        if phase == 0:
            distribution = "tail" if SPOT_REPS.index(rep) % 2 else "normal"
            fresh = self.applied.prepare_inputs(
                inputs.make_inputs(self.problem, self.seed * 7919 + 50_000 + rep, distribution)
            )
            with torch.no_grad():
                for buffer, values in zip(self.buffers[index], fresh, strict=True):
                    buffer.copy_(values)
            self.refs[index] = gate.reference_for(self.problem, *self.buffers[index])
        elif phase != 2:
            # new values in every other repetition as well: a candidate that memoises by value
            # (hashes its inputs, returns the stored answer) gains nothing while timed. Two
            # random sets drawn once, shifted by a constant of this repetition (REFILL_SHIFT),
            # at the cost of one copy (drawing fresh
            # normals for a 4k-token K/V cache took longer than the attention it fed).
            with torch.no_grad():
                for position, buffer in enumerate(self.buffers[index]):
                    source = self._fresh_source(position, rep % 2)
                    torch.add(source, REFILL_SHIFT * (rep + 1), out=buffer)
            self.refs.pop(index, None)
            self.pending = None
            return
        if index not in self.refs:
            self.refs[index] = gate.reference_for(self.problem, *self.buffers[index])
        ref, plain_err = self.refs[index]
        self.pending = (rep, ref, plain_err)

    def on_output(self, index: int, out: Any) -> None:
        early = out.detach().clone() if isinstance(out, torch.Tensor) else None
        guard.check_guards(self.state)
        if self.pending is None:
            return
        rep, ref, plain_err = self.pending
        self.pending = None
        try:
            gate.check_output(self.problem, out, ref, plain_err, values=early)
        except Rejected as rejected:
            raise Rejected(
                "timed_output", f"timed repetition {rep}: {rejected.check}: {rejected.detail}"
            ) from None
        assert early is not None
        self.checked += 1
        self.kept = (self.kept + [(out, early, rep, index)])[-SPOT_KEEP:]

    def finish(self) -> None:
        """Read the kept timed outputs again after a delay: late or overwritten work."""
        time.sleep(gate.LATE_DELAY_S)
        gate.synchronize(self.problem)
        guard.check_guards(self.state)
        self._reread(None)


def _no_work_left_behind(threads_before: set[threading.Thread], state: dict[str, Any]) -> list[str]:
    """Wait briefly for Python threads started since the build, then check global state again.

    A thread a candidate left running can change global state after the checks (and slow the
    next baseline) or finish an output late. Threads that are still alive after the wait are not
    rejected by themselves (compilers keep idle pool threads), but named in the result; their
    later effects are undone before the next trial, which starts from the pristine state.
    """
    late = [t for t in threading.enumerate() if t not in threads_before and t.is_alive()]
    deadline = time.monotonic() + LATE_THREAD_WAIT_S
    for thread in late:
        thread.join(timeout=max(0.0, deadline - time.monotonic()))
    guard.check_guards(state)
    return [t.name for t in late if t.is_alive()]


def _timing_buffers(problem: Problem, applied: Applied, seed: int, count: int) -> list[tuple]:
    return [
        applied.prepare_inputs(inputs.make_inputs(problem, seed * 7919 + 101 + i, "normal"))
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
    leftover = guard.restore_patches()  # e.g. a plugin that patched at import time
    dirty = guard.restore_state(_PRISTINE_STATE)  # e.g. a late thread of an earlier candidate
    if leftover or dirty:
        result["note"] = f"restored before the build: {leftover or ''} {', '.join(dirty)}".strip()
    state = guard.snapshot_state()
    try:
        started = time.perf_counter()
        with applied.context():
            built = variant.build(problem, **spec.get("params", {}))
        result["build_s"] = round(time.perf_counter() - started, 4)
        run = applied.wrap(built)
        gate_run = applied.wrap_for_gate(built)
    except Exception as exc:
        guard.restore_patches()
        guard.restore_state(state)
        result["error"] = f"build failed: {one_line(exc, lines=None, typed=True)}"
        result["traceback"] = traceback.format_exc(limit=6)
        return result
    try:
        guard.check_guards(state)
    except Rejected as rejected:
        result.update(
            status="rejected", rejected_by=rejected.check, detail=f"in build: {rejected.detail}"
        )
        return result

    def run_in_context(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> Any:
        with applied.context():
            return run(q, k, v)

    threads_before = set(threading.enumerate())

    def gate_in_context(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> Any:
        with applied.context():
            return gate_run(q, k, v)

    def plain_baseline(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return baseline_call(problem, q, k, v)

    baseline = applied.wrap_baseline(plain_baseline)

    try:
        report = gate.run_gate(
            problem, gate_in_context, applied.prepare_inputs, seed, int(bench["check_sets"])
        )
    except Rejected as rejected:
        result.update(status="rejected", rejected_by=rejected.check, detail=rejected.detail)
        return result
    except Exception as exc:
        guard.restore_patches()
        guard.restore_state(state)
        result["error"] = f"run failed: {one_line(exc, lines=None, typed=True)}"
        result["traceback"] = traceback.format_exc(limit=6)
        return result

    try:
        buffers = _timing_buffers(problem, applied, seed, int(bench["buffers"]))
        spot = SpotCheck(problem, buffers, applied, seed)
        pair = timing.measure_pair(
            problem,
            run_in_context,
            baseline,
            buffers,
            bench,
            on_output=spot.on_output,
            before_rep=spot.before_rep,
        )
        spot.finish()
        lingering = _no_work_left_behind(threads_before, state)
    except Rejected as rejected:
        guard.restore_patches()
        guard.restore_state(state)
        result.update(status="rejected", rejected_by=rejected.check, detail=rejected.detail)
        return result
    except Exception as exc:
        guard.restore_patches()
        guard.restore_state(state)
        result["error"] = f"timing failed: {one_line(exc, lines=None, typed=True)}"
        result["traceback"] = traceback.format_exc(limit=6)
        return result
    cand = pair.candidate
    if lingering:
        result["threads_left"] = lingering

    result.update(pair.fields())  # timing.Pair.fields: medians, paired speedup, its interval
    result.update(
        status="ok",
        spot_checks=spot.checked,
        gate_sets=report.sets,
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
