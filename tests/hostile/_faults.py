"""Faults, not cheats: each must cost one trial (FAIL with a one-line `error`), never the study.

`fault_slow_once` sleeps a minute the first time it runs (a marker file beside this plugin's
copy says it already did), so that a test can kill or interrupt the study mid-trial and rerun.
"""

import ctypes
import os
import time
from pathlib import Path

import torch

from kernels import plain_attention, register


@register("fault_segfault")
def build_segfault(problem):
    def run(q, k, v):
        ctypes.string_at(0)  # reads address 0: SIGSEGV

    return run


@register("fault_abort")
def build_abort(problem):
    def run(q, k, v):
        os.abort()

    return run


@register("fault_hang")
def build_hang(problem):
    def run(q, k, v):
        time.sleep(3600)

    return run


@register("fault_oom_huge")
def build_oom_huge(problem):
    def run(q, k, v):
        return torch.empty(1 << 44, dtype=torch.uint8)  # 16 TiB

    return run


@register("fault_oom_blowup")
def build_oom_blowup(problem):
    def run(q, k, v):
        hoard = []
        while True:  # grows until the worker's address-space limit stops it
            hoard.append(torch.ones(1 << 28, dtype=torch.uint8))

    return run


@register("fault_honest")
def build_honest(problem):
    def run(q, k, v):
        return plain_attention(q, k, v, problem.causal, problem.scale)

    return run


MARKER = Path(os.environ.get("FAULT_MARKER", str(Path(__file__).with_suffix(".marker"))))


@register("fault_slow_once")
def build_slow_once(problem):
    def run(q, k, v):
        if not MARKER.exists():
            MARKER.write_text(str(os.getpid()))
            time.sleep(60)
        return plain_attention(q, k, v, problem.causal, problem.scale)

    return run
