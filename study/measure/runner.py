"""Runner processes: where a candidate runs (and, in a process of its own, the SDPA baseline).

The judge (study/measure/harness.py) starts runners from a fork server (study/measure/procs.py)
and sends them requests; a runner answers each with a plain dict. A candidate's runner is on the
untrusted side: it imports the user's plugins, so everything in it, this module included, may
have been rewritten by the candidate. It therefore holds nothing that decides a verdict: no
reference, no tolerance, no check schedule, no seed. It receives inputs in shared memory
(study/measure/shared.py), runs the candidate, copies each output into the judge's output arena
and reports its own raw call times and facts about what was returned. The judge copies the
outputs into its own memory before it judges them, checks the times against its own wall clock,
and decides which timed outputs to check after the fact.

What the runner itself rejects (the guard, study/measure/guard.py: global state changed, a clock
or SDPA replaced) is hygiene, not security: a candidate can only fail itself that way, and one
that disables the guard gains nothing, since the judge never reads a verdict from here.

After any failure the runner synchronises its CUDA context; a CUDA error there (an illegal
address, a device-side assert) is sticky, so the runner says so in its reply and exits, and the
judge starts a fresh one.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import torch

import kernels
from kernels import Problem
from kernels.mutations import Applied
from study.errors import one_line
from study.measure import guard, timing
from study.measure.guard import Rejected
from study.measure.shared import Desc, copy_out, describe, view

# Private reference to the baseline, taken before any plugin is imported (the baseline's runner
# imports none; this also keeps a candidate's runner from calling a patched SDPA by mistake).
_SDPA = torch._C._nn.scaled_dot_product_attention
_PRISTINE_STATE = guard.snapshot_state()
LATE_THREAD_WAIT_S = 0.3  # how long threads started during a trial may take to finish


@dataclass
class RunnerSpec:
    """How to start a runner: its role ("candidate" or "baseline"), device, plugins."""

    role: str
    device: str
    judge_pid: int
    plugins: list[str] = field(default_factory=list)
    memory_limit_gb: float | None = None


def baseline_call(problem: Problem, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> Any:
    """Default SDPA on the problem's mask and scale (what kernels.builtin.sdpa.sdpa_call does)."""
    return _SDPA(q, k, v, is_causal=problem.causal, scale=problem.scale, enable_gqa=problem.gqa)


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def cuda_error(device: str) -> str | None:
    """None where the device's context is healthy; the error where a sticky one poisoned it."""
    if not device.startswith("cuda"):
        return None
    try:
        torch.cuda.synchronize(device)
    except Exception as exc:  # torch raises RuntimeError / AcceleratorError for CUDA errors
        return one_line(exc, lines=None, typed=True)
    return None


class Session:
    """One runner's state: the arenas, the built candidate (or baseline), the kept outputs."""

    def __init__(self, device: str, role: str) -> None:
        self.device = device
        self.role = role
        self.arenas: dict[str, torch.Tensor] = {}
        self.problem: Problem | None = None
        self.applied: Applied | None = None
        self.run: Any = None  # what the timed calls call
        self.gate_run: Any = None  # what the gated calls call (fresh output memory per call)
        self.timer: timing.Timer | None = None
        self.kept: dict[int, Any] = {}
        self.views: dict[tuple[str, Desc], torch.Tensor] = {}
        self.state: dict[str, Any] = {}
        self.threads_before: set[threading.Thread] = set()

    # -- requests -------------------------------------------------------------------------------
    def handle(self, kind: str, payload: dict[str, Any]) -> dict[str, Any]:
        handler = getattr(self, f"on_{kind}", None)
        if handler is None:
            return {"status": "error", "error": f"unknown request {kind!r}"}
        return handler(payload)

    def on_ping(self, payload: dict[str, Any]) -> dict[str, Any]:
        return {"status": "ok", "pid": os.getpid(), "pgid": os.getpgid(0)}

    def on_supports(self, payload: dict[str, Any]) -> dict[str, Any]:
        problem = Problem.from_dict(payload["problem"])
        registry = kernels.variants()
        answers = {
            name: (registry[name].supports(problem) if name in registry else "not registered")
            for name in payload["names"]
        }
        return {"status": "ok", "answers": answers}

    def on_arena(self, payload: dict[str, Any]) -> dict[str, Any]:
        self.arenas[payload["name"]] = payload["base"]
        self.views = {}
        return {"status": "ok"}

    def on_build(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Build a candidate (spec) or, in the baseline's runner, the baseline for `mutations`."""
        self.problem = problem = Problem.from_dict(payload["problem"])
        spec = payload["candidate"]
        self.applied = applied = Applied(spec.get("mutations", {}), problem)
        self.timer = timing.Timer(problem, cold_cache=False)  # the judge flushes caches itself
        self.kept = {}
        self.threads_before = set(threading.enumerate())
        self.state = guard.snapshot_state()
        if self.role == "baseline":
            self.run = self.gate_run = applied.wrap_baseline(
                lambda q, k, v: baseline_call(problem, q, k, v)
            )
            return {"status": "ok", "build_s": 0.0}
        registry = kernels.variants()
        if spec["variant"] not in registry:
            return {"status": "error", "error": f"variant {spec['variant']} is not registered"}
        leftover = guard.restore_patches()  # e.g. a plugin that patched at import time
        dirty = guard.restore_state(_PRISTINE_STATE)  # e.g. a late thread of an earlier candidate
        self.state = guard.snapshot_state()
        started = time.perf_counter()
        with applied.context():
            built = registry[spec["variant"]].build(problem, **spec.get("params", {}))
        reply: dict[str, Any] = {"status": "ok", "build_s": round(time.perf_counter() - started, 4)}
        if leftover or dirty:
            reply["note"] = f"restored before the build: {leftover or ''} {', '.join(dirty)}"
        timed, gated = applied.wrap(built), applied.wrap_for_gate(built)

        def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> Any:
            with applied.context():
                return timed(q, k, v)

        def gate_run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> Any:
            with applied.context():
                return gated(q, k, v)

        self.run, self.gate_run = run, gate_run
        self.threads_before = set(threading.enumerate())
        try:
            guard.check_guards(self.state)
        except Rejected as rejected:
            return reply | rejection(rejected, "in build: ")
        return reply

    def _view(self, arena: str, desc: Desc) -> torch.Tensor:
        """The same tensor object for the same memory, call after call, as a model passes its
        buffers (a cache keyed by `id()` then answers stale values, as it would there)."""
        key = (arena, desc)
        if key not in self.views:
            self.views[key] = view(self.arenas[arena], desc)
        return self.views[key]

    def _views(self, arena: str, descs: list[Desc]) -> tuple[torch.Tensor, ...]:
        return tuple(self._view(arena, d) for d in descs)

    def on_gate(self, payload: dict[str, Any]) -> dict[str, Any]:
        """One gated call on fresh inputs: copy the output out at once, keep it for re-reads."""
        inputs = self._views("inputs", payload["inputs"])
        slot = self._view("outputs", payload["slot"])
        state = guard.snapshot_state()
        out = self.gate_run(*inputs)
        meta = describe(out)
        meta["input_ptrs"] = [torch.Tensor.untyped_storage(t).data_ptr() for t in inputs]
        copied = copy_out(slot, out, meta)  # stream-ordered: what the call left when it returned
        self.kept[int(payload["key"])] = out
        synchronize(self.device)
        try:
            guard.check_guards(state)
        except Rejected as rejected:
            return rejection(rejected)
        return {"status": "ok", "meta": meta, "copied": copied}

    def on_reread(self, payload: dict[str, Any]) -> dict[str, Any]:
        """After `delay` seconds, copy kept outputs out again (late or overwritten work). With
        `join_s`, first wait (up to that long) for the threads the candidate started to end: on
        a loaded machine, late work on a side thread can take longer than any fixed delay."""
        time.sleep(float(payload.get("delay", 0.0)))
        if payload.get("join_s"):
            self._join_late_threads(float(payload["join_s"]))
        synchronize(self.device)
        copied = []
        for key, desc in payload["pairs"]:
            out = self.kept.get(int(key))
            copied.append(copy_out(self._view("outputs", desc), out, describe(out)))
        synchronize(self.device)
        return {"status": "ok", "copied": copied}

    def on_timed(self, payload: dict[str, Any]) -> dict[str, Any]:
        """One timed call: its own time (this process's clock or CUDA events, the thread pool
        woken first), the output copied out right after it returned."""
        assert self.timer is not None
        inputs = self._views("inputs", payload["inputs"])
        return self._timed_reply(payload, *self.timer.time_call(self.run, inputs))

    def on_timed_block(self, payload: dict[str, Any]) -> dict[str, Any]:
        """A back-to-back block of `calls` calls on one buffer (timing.Timer.time_block): the
        per-call time, the last output copied out."""
        assert self.timer is not None
        inputs = self._views("inputs", payload["inputs"])
        calls = int(payload["calls"])
        return self._timed_reply(payload, *self.timer.time_block(self.run, inputs, calls))

    def _timed_reply(self, payload: dict[str, Any], us: float, out: Any) -> dict[str, Any]:
        meta = describe(out)
        copied = copy_out(self._view("outputs", payload["slot"]), out, meta)
        del out
        synchronize(self.device)
        try:  # in the baseline's runner too: both sides' requests cost the same
            guard.check_guards(self.state)
        except Rejected as rejected:
            return rejection(rejected)
        return {"status": "ok", "us": us, "copied": copied, "meta": None if copied else meta}

    def _join_late_threads(self, limit_s: float) -> list[threading.Thread]:
        """Wait up to `limit_s` for the threads started since the build; those still alive."""
        here = threading.current_thread()
        late = [
            t
            for t in threading.enumerate()
            if t not in self.threads_before and t is not here and t.is_alive()
        ]
        deadline = time.monotonic() + limit_s
        for thread in late:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        return [t for t in late if t.is_alive()]

    def on_finish(self, payload: dict[str, Any]) -> dict[str, Any]:
        """End the trial here: drop the candidate and the arenas; name threads left running."""
        late = self._join_late_threads(LATE_THREAD_WAIT_S if self.role == "candidate" else 0.0)
        reply: dict[str, Any] = {"status": "ok"}
        if self.role == "candidate":
            reply["threads_left"] = [t.name for t in late]
            guard.restore_patches()
            guard.restore_state(_PRISTINE_STATE)
        self.run = self.gate_run = self.applied = None
        self.kept, self.arenas, self.views = {}, {}, {}
        synchronize(self.device)
        return reply


def rejection(rejected: Rejected, prefix: str = "") -> dict[str, Any]:
    return {"status": "rejected", "rejected_by": rejected.check, "detail": prefix + rejected.detail}


def _watch_judge(judge_pid: int) -> None:
    """Exit when the judge is gone, even if it was SIGKILLed (its pipe alone would not wake a
    runner busy in a hung candidate)."""
    parent = os.getppid()

    def watch() -> None:
        while True:
            try:
                os.kill(judge_pid, 0)
            except ProcessLookupError:
                os._exit(1)
            except PermissionError:
                pass
            if os.getppid() != parent:
                os._exit(1)
            time.sleep(0.5)

    threading.Thread(target=watch, daemon=True, name="judge-watch").start()


def _limit_memory(limit_gb: float | None) -> None:
    """Cap the address space, so that a runaway candidate fails alone (CPU only)."""
    if not limit_gb or limit_gb <= 0:
        return
    try:
        import resource

        limit = int(limit_gb * 1024**3)
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    except (ImportError, ValueError, OSError) as exc:
        print(f"memory limit not set: {exc}", flush=True)


def serve(conn: Connection, spec: RunnerSpec) -> None:
    """A runner's main loop (runs in the forked process)."""
    os.setpgid(0, 0)  # its own process group: the judge stops and kills it as one
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _watch_judge(spec.judge_pid)
    # stdout and stderr are the worker's log, inherited through the fork server (a sandbox may
    # not let a runner open a file for writing)
    sys.stdout = sys.stderr = open(1, "a", buffering=1, closefd=False)  # noqa: SIM115
    if spec.device.startswith("cuda"):
        torch.cuda.set_device(torch.device(spec.device))
    if spec.role == "candidate":
        _limit_memory(spec.memory_limit_gb)
    session = Session(spec.device, spec.role)
    for path in spec.plugins:
        try:
            kernels.load_plugin(path)
        except BaseException as exc:  # a plugin may raise anything at import
            print(f"plugin {path} failed to load: {exc}", flush=True)
    while True:
        try:
            kind, payload = conn.recv()
        except (EOFError, OSError, KeyboardInterrupt):
            return
        try:
            reply = session.handle(kind, payload)
        except BaseException as exc:  # a candidate may raise anything, SystemExit included
            reply = {
                "status": "error",
                "error": one_line(exc, lines=None, typed=True),
                "traceback": traceback.format_exc(limit=6),
            }
            print(traceback.format_exc(), flush=True)
        failed = reply.get("status") != "ok"
        broken = cuda_error(spec.device) if failed else None
        if broken:
            reply["cuda_error"] = broken
        sys.stdout.flush()
        conn.send(reply)
        if broken:
            os._exit(3)  # the context is poisoned: every later call here would fail too


guard.protect("harness_patched", sys.modules[__name__], ("describe", "copy_out", "view"))
guard.protect("baseline_patched", sys.modules[__name__], ("_SDPA", "baseline_call"))
