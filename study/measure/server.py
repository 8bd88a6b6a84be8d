"""The runners' fork server: started by the judge before it imports torch, forks every runner.

A fork server (multiprocessing's "forkserver") is a process that imported what every runner
needs and nothing else (study/measure/preload.py), and forks a child for each runner the judge
starts: a fresh runner costs a fork (tens of milliseconds), not an import of torch (seconds), and
never inherits the judge's memory (its secret, its references), since the server was spawned
clean. This module needs no torch, so that the judge can start the server first and import
torch while the server does.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing as mp
import signal
from multiprocessing import forkserver
from typing import Any

PRELOAD = ["study.measure.preload"]
PR_SET_DUMPABLE = 4


def no_ptrace() -> None:
    """Make this process non-dumpable: processes of the same user (a candidate's) can then
    neither ptrace it nor read its memory or file descriptors through /proc."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)


def start() -> None:
    """Start the fork server now (it imports torch while the caller does the same)."""
    context().set_forkserver_preload(PRELOAD)
    forkserver.ensure_running()


def context() -> Any:
    return mp.get_context("forkserver")


def describe_exit(code: int | None) -> str:
    """A process's exit code in words (a trial's `error`: "worker crashed: killed by SIGSEGV")."""
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with status {code}"
