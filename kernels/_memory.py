"""How much memory a computation may still take on a device, read where the system keeps it.

The float64 reference and the gate's plain yardstick of a long problem would need tens of GiB for
whole score matrices (long_hd128: 64 GiB per matrix); they work in blocks sized from these
figures instead. GPU: `torch.cuda.mem_get_info` plus what torch's caching allocator holds unused
(it hands that back to torch without asking the driver). CPU: MemAvailable of /proc/meminfo (what
can be allocated without swapping; free pages from `os.sysconf` where there is no /proc), capped by
what is left of an address-space limit (the CPU worker runs under one). Variants that hold a
whole score matrix say they cannot run a problem whose matrix does not fit
(`whole_scores_shortfall`): left out before the study starts, not one out-of-memory per trial.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from kernels._problem import Problem

BUDGET_FRACTION = 0.25  # of the free memory, for one block's temporaries
BUDGET_CAP = 2 * 1024**3  # larger blocks gain nothing measurable and crowd the candidate
BUDGET_FLOOR = 16 * 1024**2  # a block never gets less (one score row always runs)


def _meminfo_kb(field: str, path: str = "/proc/meminfo") -> int | None:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _address_space_left() -> int | None:
    """Bytes the process may still map under RLIMIT_AS (None: no limit, or unknown)."""
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    except (ImportError, ValueError, OSError):
        return None
    if soft == resource.RLIM_INFINITY:
        return None
    mapped_kb = _meminfo_kb("VmSize", "/proc/self/status")
    return max(0, soft - (mapped_kb or 0) * 1024)


def host_free_bytes() -> int:
    """Bytes this process can allocate on the host now (see the module docstring)."""
    available_kb = _meminfo_kb("MemAvailable")
    if available_kb is not None:
        free = available_kb * 1024
    else:
        try:
            free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            free = BUDGET_CAP * 4  # nothing to read: assume a modest machine
    left = _address_space_left()
    return free if left is None else min(free, left)


def free_bytes(device: torch.device | str) -> int:
    """Bytes a computation on `device` can allocate now."""
    dev = torch.device(device)
    if dev.type == "cuda":
        free, _total = torch.cuda.mem_get_info(dev)
        unused_cache = torch.cuda.memory_reserved(dev) - torch.cuda.memory_allocated(dev)
        return int(free) + max(0, int(unused_cache))
    return host_free_bytes()


def block_budget(device: torch.device | str) -> int:
    """Bytes one block of a blocked computation may take on `device`: a quarter of the free
    memory, at most BUDGET_CAP, at least BUDGET_FLOOR."""
    share = int(free_bytes(device) * BUDGET_FRACTION)
    return max(BUDGET_FLOOR, min(BUDGET_CAP, share))


FIT_FRACTION = 0.8  # of the free memory a variant may plan to use (the gate needs some too)


def shortfall(device: torch.device | str, nbytes: int, what: str) -> str | None:
    """None where `nbytes` fit in FIT_FRACTION of `device`'s free memory, else why not."""
    free = free_bytes(device)
    if nbytes <= free * FIT_FRACTION:
        return None
    need, have = nbytes / 1024**3, free / 1024**3
    return f"{what} need about {need:.1f} GiB; {device} has {have:.1f} GiB free"


def whole_scores_shortfall(problem: Problem) -> str | None:
    """For variants that hold the whole score matrix: None where it fits, with its float32
    softmax (plain attention's peak: scores in the input dtype, a float32 copy, its softmax;
    inductor's fused softmax holds less), else why not (long_hd128: about 80 GiB in bf16)."""
    scores = problem.batch * problem.heads_q * problem.seq_q * problem.seq_kv
    elem = torch.finfo(problem.dtype).bits // 8
    return shortfall(
        problem.device,
        scores * (elem + 8),
        f"the whole score matrix ({problem.batch * problem.heads_q} x {problem.seq_q} x "
        f"{problem.seq_kv}) and its float32 softmax",
    )
