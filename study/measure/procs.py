"""The judge's runner processes: forked from a pristine server, one process group each.

`RunnerProcess` is one runner (study/measure/runner.py), forked by the fork server
(study/measure/server.py). Each runner leads
its own process group: the judge stops it as a whole while the other side of a paired
measurement runs (`pause`/`resume`, SIGSTOP/SIGCONT), and kills it as a whole, with every process
it started that is still its descendant (`kill`). `Runners` holds the judge's runners: the
baseline's (trusted: it never imports a plugin), a long-lived one for built-in variants, and a
fresh one for every trial of a plugin's variant, killed with its trial.

The containment around all of this is study/measure/contain.py's, applied to the worker (the
judge) and inherited by the fork server and every runner: the sandbox, and the judge as the
subreaper, so that a candidate's double fork lands below the judge; `Runners.strays` finds those
and `Runners.kill_strays` ends them (one mechanism: contain.kill_tree, for a runner and for the
judge's leftovers alike).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

from study.measure import server
from study.measure.contain import descendants, kill_tree
from study.measure.runner import RunnerSpec, serve
from study.measure.server import describe_exit

CLOCK_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


class RunnerGone(Exception):
    """The runner died or did not answer in time; `str(exc)` is the one-line trial error."""


class Deadline:
    """A trial's wall-clock limit, shared by every request of the trial."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = float(timeout_s)
        self.until = time.monotonic() + self.timeout_s

    def left(self) -> float:
        return max(0.0, self.until - time.monotonic())


def cpu_seconds(pids: list[int]) -> float:
    """CPU time the processes (all their threads) used so far, those still alive: from
    /proc/<pid>/task/<tid>/schedstat (nanoseconds), else /proc/<pid>/stat (clock ticks)."""
    total = 0.0
    for pid in pids:
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                total += int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0]) / 1e9
            except (OSError, IndexError, ValueError):
                with contextlib.suppress(OSError, IndexError, ValueError):
                    fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1]
                    utime, stime = fields.split()[11:13]
                    total += (int(utime) + int(stime)) / CLOCK_TICK
    return total


class RunnerProcess:
    """One runner process and the pipe to it."""

    def __init__(self, spec: RunnerSpec) -> None:
        self.spec = spec
        self.process: Any = None
        self.conn: Connection | None = None
        self.pid = 0
        self.uses = 0  # trials run in this process

    def start(self) -> None:
        ctx = server.context()
        parent, child = ctx.Pipe()
        self.process = ctx.Process(
            target=serve, args=(child, self.spec), daemon=True, name=f"runner-{self.spec.role}"
        )
        self.process.start()
        child.close()
        self.conn, self.pid = parent, self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.is_alive()

    def request(self, kind: str, payload: dict[str, Any], deadline: Deadline) -> dict[str, Any]:
        """Send one request and wait for the answer (see `receive`)."""
        self.send(kind, payload)
        return self.receive(deadline)

    def ensure(self) -> None:
        """Start the process where there is none (a long-lived runner, at a trial's start)."""
        if not self.alive():
            self.kill()
            self.start()

    def send(self, kind: str, payload: dict[str, Any]) -> None:
        """Send one request; where the process died, `receive` says how (a dead runner is never
        replaced in the middle of a trial: its state went with it)."""
        if self.conn is None or self.process is None:
            raise RunnerGone("worker crashed: the runner was already gone")
        with contextlib.suppress(BrokenPipeError, ConnectionResetError, OSError):
            self.conn.send((kind, payload))

    def receive(self, deadline: Deadline) -> dict[str, Any]:
        """The answer to the last request; RunnerGone (the process is then killed) where the
        runner died or the deadline passed first."""
        assert self.conn is not None and self.process is not None
        ready = wait([self.conn, self.process.sentinel], timeout=deadline.left())
        if self.conn in ready:
            with contextlib.suppress(EOFError, OSError):
                return self.conn.recv()
        if not ready:
            self.kill()
            raise RunnerGone(f"timeout: no result after {deadline.timeout_s:g} s")
        self.process.join(timeout=5)
        reason = describe_exit(self.process.exitcode)
        self.kill()
        raise RunnerGone(f"worker crashed: {reason}")

    def pause(self) -> None:
        """Stop the runner's whole process group (its candidate's forks too)."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)

    def _signal(self, signum: int) -> None:
        if self.pid:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signum)

    def kill(self) -> None:
        """Kill the runner, its process group and its other descendants."""
        if self.process is not None and self.pid:
            kill_tree(self.pid)  # stopped first, its subtree emptied, then itself
            self._signal(signal.SIGKILL)  # its group: forks that left the tree but not the group
            self._signal(signal.SIGCONT)
            self.process.join(timeout=10)
        if self.conn is not None:
            self.conn.close()
        self.process, self.conn, self.pid = None, None, 0


class Runners:
    """The judge's runner processes (see the module docstring)."""

    def __init__(self, device: str, plugins: list[str], memory_limit_gb: float | None) -> None:
        self.device = device
        self.plugins = plugins
        self.memory_limit_gb = memory_limit_gb
        self.baseline = RunnerProcess(self._spec("baseline", []))
        self.builtin = RunnerProcess(self._spec("candidate", []))
        self.replaced = 0
        # below the judge before any runner: the fork server, multiprocessing's resource tracker
        self.infrastructure = set(descendants(os.getpid()))

    def _spec(self, role: str, plugins: list[str]) -> RunnerSpec:
        return RunnerSpec(role, self.device, os.getpid(), list(plugins), self.memory_limit_gb)

    def candidate(self, builtin: bool) -> RunnerProcess:
        """The process a candidate runs in: the built-ins' long-lived one (no plugin code ever
        ran there), or a fresh process with the plugins imported, for this trial only."""
        if builtin:
            return self.builtin
        fresh = RunnerProcess(self._spec("candidate", self.plugins))
        fresh.start()
        return fresh

    def ready(self, builtin: bool) -> RunnerProcess:
        """`candidate(builtin)`, with the long-lived processes started where they died."""
        self.baseline.ensure()
        if builtin:
            self.builtin.ensure()
        return self.candidate(builtin)

    def release(self, runner: RunnerProcess, healthy: bool) -> None:
        """End a trial's use of `runner`: a plugin's process always dies with its trial; the
        built-ins' process too where the trial did not end well (a crash, a rejection)."""
        runner.uses += 1
        if runner is not self.builtin or not healthy:
            if runner is self.builtin and runner.alive():
                self.replaced += 1
            runner.kill()

    def kept(self) -> set[int]:
        """The judge's own processes: the fork server, the resource tracker, the long-lived
        runners."""
        return self.infrastructure | {r.pid for r in (self.baseline, self.builtin) if r.pid}

    def strays(self) -> list[int]:
        """Every process below the judge but its own: a plugin's runner, whatever candidates
        started (orphans too: the judge is their subreaper)."""
        kept = self.kept()
        return [pid for pid in descendants(os.getpid()) if pid not in kept]

    def kill_strays(self) -> int:
        """Kill `strays()` (between requests: no trial's process outlives it); how many."""
        return kill_tree(os.getpid(), include_root=False, spare=self.kept())

    def stop(self) -> None:
        for runner in (self.baseline, self.builtin):
            runner.kill()
