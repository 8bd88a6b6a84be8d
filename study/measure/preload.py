"""Imported by the runners' fork server only (study/measure/server.py), before it forks anything.

Loads what every runner needs (torch, the built-in variants, the runner's code), so that a fresh
runner costs a fork instead of an import of torch; runs no candidate code (plugins are imported in
each candidate's runner after the fork); initialises no CUDA context (a forked child could not
use it). The server is made non-dumpable, and its children inherit that: a candidate's process
cannot attach to it or to the baseline's runner with ptrace, nor read their memory.
"""

from __future__ import annotations

import threading

import torch

import kernels
from study.measure import runner, server

server.no_ptrace()


def thread_lock_for_tqdm() -> None:
    """Give tqdm a thread lock before any bar exists (every runner inherits it).

    tqdm's first bar creates a multiprocessing RLock: a named semaphore registered with the
    judge's resource tracker, and a killed runner never unregisters it: the study then ended
    with `resource_tracker: ... leaked semaphore` (the bar is torch.compile's, drawn inside the
    compiled variants' build). A thread lock is all a bar needs here.
    """
    try:
        from tqdm import tqdm
    except ImportError:
        return
    tqdm.set_lock(threading.RLock())


thread_lock_for_tqdm()
kernels.variants()  # the built-in modules, imported once here
if torch.cuda.is_initialized():  # pragma: no cover - a built-in module that touched the GPU
    print("warning: CUDA was initialised in the runners' fork server; runners cannot use it")
__all__ = ["runner"]
