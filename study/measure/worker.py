"""Isolated workers: one process per device judges candidates; the candidates run elsewhere.

The worker process is the judge (study/measure/harness.py): it imports no plugin and runs no
candidate code. It starts the runner processes (study/measure/procs.py) where the candidate and,
apart from it, the SDPA baseline run, draws the inputs, computes the references, checks the
outputs and the times. The study process talks to it through `Worker.call`: a request and a
plain-dict reply.

A candidate that segfaults, aborts or hangs costs one trial: its runner dies or is killed, the
judge replies why and starts a fresh runner. The judge itself is replaced only where it dies
(a bug, or a device whose context a candidate poisoned for every process): the study waits on the
socket and on the process at once, kills the judge past the trial's limit plus a grace, and
starts a fresh one for the next trial.

The worker is started contained (study/measure/contain.py): in its own session, as the reaper
of everything below it, inside bubblewrap's read-only, PID-namespaced sandbox where that works;
its runners are its descendants and inherit all of it. Every process a candidate started (a
double fork lands on the judge, the subreaper) is killed by the judge before its reply leaves,
whatever the candidate did to its own process: the judge runs none of its code. The whole tree
dies with the worker when it is stopped. The worker talks to the study over an inherited socket
(`python -m study.measure.worker ARGS`); its log is its stdout and stderr, opened by the study
(the sandbox cannot open files for writing) and inherited by the fork server and every runner,
so that a noisy candidate cannot scribble over the progress bar, and each result carries its
own log lines. It ignores SIGINT (the study process decides and kills the worker), exits by
itself when its parent is gone (a lifeline pipe whose other end only the study holds reads EOF:
a SIGKILLed study leaves no orphan computing on), and makes itself non-dumpable, so that a
candidate's process (same user) cannot ptrace it or read its memory through /proc. Candidate
runners run under an address-space limit (`worker.memory_limit_gb`, default 75% of RAM on the
CPU), so that a memory blow-up fails one trial with an allocation error instead of taking the
machine down.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import threading
import time
import traceback
import types
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import TYPE_CHECKING, Any

from study.measure import contain

if TYPE_CHECKING:  # the worker imports torch (through kernels) only after redirecting its output
    from kernels import Problem

LOG_TAIL_CHARS = 4000
JUDGE_GRACE_S = 60.0  # the judge's own work past a trial's limit (references, checks)


def evaluate_task(
    problem: Problem, candidate: dict[str, Any], bench: dict[str, Any], seed: int, label: str
) -> dict[str, Any]:
    """The payload of an `evaluate` request, as study/measure/harness.py `evaluate` reads it.

    `candidate` is a candidate's spec (`Candidate.to_dict()`); `seed` draws the gate's inputs;
    `label` names the request in the worker's log.
    """
    return {
        "problem": problem.to_dict(),
        "candidate": candidate,
        "bench": bench,
        "seed": seed,
        "label": label,
    }


def _die_with_parent(lifeline: int) -> None:
    """Exit, with everything the candidate started, when the study process is gone, even if it
    was SIGKILLed (no cleanup ran there): the study holds the only write end of `lifeline`, so
    a read returns EOF then. (Not PR_SET_PDEATHSIG: it fires when the *thread* that spawned us
    ends, and workers may be started from short-lived threads; not the parent pid: inside the
    sandbox's PID namespace the study's pid is not ours to see.)
    """

    def watch() -> None:
        while True:
            try:
                if not os.read(lifeline, 1):
                    break
            except InterruptedError:
                continue
            except OSError:
                break
        contain.kill_descendants()
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


def default_memory_limit_gb(device: str) -> float | None:
    """`worker.memory_limit_gb` unset: 75% of RAM on the CPU; none on a GPU (CUDA reserves
    huge virtual ranges, so an address-space limit would break it)."""
    if not device.startswith("cpu"):
        return None
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
    return round(pages * size * 0.75 / 1024**3, 1)


def _serve(
    conn: Connection,
    device: str,
    plugins: list[str],
    log_path: str,
    lifeline: int | None = None,
    memory_limit_gb: float | None = None,
) -> None:
    """Worker main loop (runs in the contained process): the judge."""
    # Ctrl-C in a terminal reaches the whole process group: the study decides, not the worker.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    contain.set_subreaper()  # what a candidate starts stays below us, to be killed
    if lifeline is not None:
        _die_with_parent(lifeline)
    log = open(1, "a", buffering=1, closefd=False)  # noqa: SIM115 - lives as long as the process
    sys.stdout = sys.stderr = log
    if device == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")
    # Inductor's compile-worker pool would be killed with a trial's leftovers: compile in the
    # runner itself (set before the fork server starts: every runner inherits it).
    os.environ["TORCHINDUCTOR_COMPILE_THREADS"] = "1"
    # The fork server must not initialise CUDA (a forked runner could not use it then): a
    # `torch.cuda.is_available()` there asks NVML, not the CUDA runtime.
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    from study.measure import server

    # Every process multiprocessing starts imports the parent's main module again (here this
    # module, as `python -m` ran it): a runner needs none of it.
    sys.modules["__main__"] = types.ModuleType("__main__")
    server.no_ptrace()
    server.start()  # the runners' server imports torch while the judge does
    # The judge's own thread pool must not spin while a runner's call is timed.
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    import torch

    from study.measure.harness import Judge

    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
    judge = Judge(device, plugins, memory_limit_gb)
    while True:
        try:
            kind, payload = conn.recv()
        except (EOFError, KeyboardInterrupt):
            judge.stop()
            return
        start = log.tell()
        print(f"--- {kind} {payload.get('label', '')} ---", flush=True)
        try:
            if kind == "evaluate":
                reply = judge.evaluate(payload)
            elif kind == "supports":
                reply = {
                    "status": "ok",
                    "answers": judge.supports(
                        payload["problem"], payload["names"], float(payload.get("timeout_s", 300))
                    ),
                }
            elif kind == "env":
                from study.measure.env import fingerprint

                reply = {"status": "ok", "env": fingerprint(device)}
            else:
                reply = {"status": "error", "error": f"unknown request {kind!r}"}
        except BaseException as exc:  # the judge's own bug: one trial, with the traceback logged
            reply = {"status": "error", "error": f"{type(exc).__name__}: {exc}"[:300]}
            print(traceback.format_exc(), flush=True)
        leftovers = judge.kill_strays()  # no candidate process of this request outlives it
        if leftovers:
            print(f"killed {leftovers} process(es) the candidate left running", flush=True)
        sys.stdout.flush()
        try:
            with open(log_path) as fh:
                fh.seek(start)
                reply["log"] = fh.read()[-LOG_TAIL_CHARS:]
        except OSError:
            pass
        conn.send(reply)
        if reply.get("judge_cuda_error"):
            judge.stop()
            os._exit(3)  # this process's CUDA context is poisoned too: the study starts a fresh one


class Worker:
    """A replaceable worker process bound to one device."""

    def __init__(
        self,
        device: str,
        plugins: list[str],
        log_path: Path,
        memory_limit_gb: float | None = None,
        sandbox: contain.Sandbox | None = None,
    ) -> None:
        """`memory_limit_gb` (candidate runners'): None picks `default_memory_limit_gb(device)`;
        0 means no limit. `sandbox`: how the process is contained (default: bwrap where it
        works); the runners inherit it."""
        self.device = device
        self.sandbox = sandbox or contain.Sandbox()
        self.memory_limit_gb = (
            default_memory_limit_gb(device) if memory_limit_gb is None else memory_limit_gb
        )
        self.plugins = [str(Path(p).resolve()) for p in plugins]
        self.log_path = Path(log_path)
        self.process: contain.Contained | None = None
        self.conn: Connection | None = None
        self.lifeline: int | None = None
        self.restarts = 0

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        ours, theirs = socket.socketpair()
        life_r, life_w = os.pipe()
        args = {
            "conn": theirs.fileno(),
            "device": self.device,
            "plugins": self.plugins,
            "log_path": str(self.log_path),
            "lifeline": life_r,
            "memory_limit_gb": self.memory_limit_gb,
        }
        try:
            with open(self.log_path, "ab") as log:
                self.process = contain.spawn(
                    [sys.executable, "-m", "study.measure.worker", json.dumps(args)],
                    self.sandbox,
                    gpu=self.device.startswith("cuda"),
                    pass_fds=(theirs.fileno(), life_r),
                    stdout=log,
                    stderr=log,
                )
        finally:
            theirs.close()
            os.close(life_r)
        self.conn = Connection(ours.detach())
        self.lifeline = life_w

    def alive(self) -> bool:
        return self.process is not None and self.process.alive()

    def stop(self) -> None:
        """Kill the process and all it started (its runners, whatever they started)."""
        if self.process is not None:
            self.process.kill()
        if self.conn is not None:
            self.conn.close()
        if self.lifeline is not None:
            os.close(self.lifeline)
        self.process, self.conn, self.lifeline = None, None, None

    def _wait(self, timeout_s: float) -> str:
        """ "reply", "exited" or "timeout": whichever comes first."""
        assert self.conn is not None and self.process is not None
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            watched: list[Any] = [self.conn]
            if self.process.sentinel is not None:
                watched.append(self.process.sentinel)
            ready = wait(watched, timeout=max(0.0, min(left, 1.0)))
            if self.conn in ready:
                return "reply"
            if ready or not self.process.alive():
                return "exited"
            if left <= 0:
                return "timeout"

    def call(self, kind: str, payload: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        """Send one request; on timeout or death, replace the worker and say why."""
        if not self.alive():
            if self.process is not None:
                self.restarts += 1
                self.stop()
            self.start()
        assert self.conn is not None and self.process is not None
        started = time.monotonic()
        try:
            # the judge enforces the trial's limit on the runners; it gets a grace of its own
            self.conn.send((kind, {**payload, "timeout_s": timeout_s}))
            ready = self._wait(timeout_s + JUDGE_GRACE_S)
            if ready == "reply":
                try:
                    reply = self.conn.recv()
                    reply["wall_s"] = round(time.monotonic() - started, 3)
                    return reply
                except (EOFError, OSError):
                    pass
            if ready == "timeout":
                self.stop()
                self.restarts += 1
                return {
                    "status": "error",
                    "error": f"timeout: no result after {timeout_s + JUDGE_GRACE_S:g} s",
                    "log": self._log_tail(),
                }
            self.process.wait(5)
            reason = self.process.exit_reason()
            self.stop()
            self.restarts += 1
            return {
                "status": "error",
                "error": f"worker crashed: {reason}",
                "log": self._log_tail(),
            }
        except KeyboardInterrupt:
            self.stop()
            raise

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-LOG_TAIL_CHARS:]
        except OSError:
            return ""


def main(argv: list[str]) -> None:
    """`python -m study.measure.worker ARGS`: the worker process (Worker.start writes ARGS)."""
    args = json.loads(argv[0])
    _serve(
        Connection(args["conn"]),
        args["device"],
        args["plugins"],
        args["log_path"],
        args["lifeline"],
        args["memory_limit_gb"],
    )


if __name__ == "__main__":
    main(sys.argv[1:])
