"""Isolated workers: one spawned process per device builds, checks and times candidates.

A candidate that segfaults, aborts, hangs or poisons its CUDA context costs one trial: the parent
waits on the pipe and on the process at once, kills the worker on timeout, reports why it died,
and starts a fresh one for the next trial. The worker's stdout/stderr go to a log file, so that a
noisy candidate cannot scribble over the progress bar, and each result carries its own log lines.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sys
import time
import traceback
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

LOG_TAIL_CHARS = 4000


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with status {code}"


def _serve(conn: Connection, device: str, plugins: list[str], log_path: str) -> None:
    """Worker main loop (runs in the spawned process)."""
    log = open(log_path, "a", buffering=1)  # noqa: SIM115 - lives as long as the process
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    sys.stdout = sys.stderr = log
    if device == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")
    import torch

    import kernels
    from study import harness

    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
    for path in plugins:
        kernels.load_plugin(path)
    while True:
        try:
            kind, payload = conn.recv()
        except (EOFError, KeyboardInterrupt):
            return
        start = log.tell()
        print(f"--- {kind} {payload.get('label', '')} ---", flush=True)
        try:
            if kind == "evaluate":
                reply = harness.evaluate(payload)
            elif kind == "supports":
                reply = {
                    "status": "ok",
                    "answers": harness.supports(payload["problem"], payload["names"]),
                }
            elif kind == "env":
                from study.env import fingerprint

                reply = {"status": "ok", "env": fingerprint(device)}
            elif kind == "ping":
                reply = {"status": "ok", "pid": os.getpid()}
            else:
                reply = {"status": "error", "error": f"unknown request {kind!r}"}
        except BaseException as exc:  # a candidate may raise anything, SystemExit included
            reply = {"status": "error", "error": f"{type(exc).__name__}: {exc}"[:300]}
            print(traceback.format_exc(), flush=True)
        sys.stdout.flush()
        try:
            with open(log_path) as fh:
                fh.seek(start)
                reply["log"] = fh.read()[-LOG_TAIL_CHARS:]
        except OSError:
            pass
        conn.send(reply)


class Worker:
    """A replaceable worker process bound to one device."""

    def __init__(self, device: str, plugins: list[str], log_path: Path) -> None:
        self.device = device
        self.plugins = [str(Path(p).resolve()) for p in plugins]
        self.log_path = Path(log_path)
        self.process: mp.process.BaseProcess | None = None
        self.conn: Connection | None = None
        self.restarts = 0

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        self.process = ctx.Process(
            target=_serve,
            args=(child, self.device, self.plugins, str(self.log_path)),
            daemon=True,
            name=f"kernel-study-worker-{self.device}",
        )
        self.process.start()
        child.close()
        self.conn = parent

    def alive(self) -> bool:
        return self.process is not None and self.process.is_alive()

    def stop(self) -> None:
        """Kill the process (a hung candidate ignores polite requests)."""
        if self.process is not None:
            if self.process.is_alive():
                self.process.kill()
            self.process.join(timeout=10)
        if self.conn is not None:
            self.conn.close()
        self.process, self.conn = None, None

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
            self.conn.send((kind, payload))
            ready = wait([self.conn, self.process.sentinel], timeout=timeout_s)
            if self.conn in ready:
                try:
                    reply = self.conn.recv()
                    reply["wall_s"] = round(time.monotonic() - started, 3)
                    return reply
                except (EOFError, OSError):
                    pass
            if not ready:
                self.stop()
                self.restarts += 1
                return {
                    "status": "error",
                    "error": f"timeout: no result after {timeout_s:g} s",
                    "log": self._log_tail(),
                }
            self.process.join(timeout=5)
            reason = _describe_exit(self.process.exitcode)
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
