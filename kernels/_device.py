"""Device naming: the device model's name and its slug, as a study and a tuning table key them.

A tuning table's entries are keyed by the slug of the device model they were measured on, and the
study names itself after the same slug; both sides must compute it alike, so it is defined once,
here, where the deploy-time library (kernels.tuned) can use it without importing the study.
"""

from __future__ import annotations

import os
import platform
import re

import torch


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo), else what the platform module says."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    """The device model: the GPU's name (index None: the current device), or 'CPU <model> xN'."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return torch.cuda.get_device_name(index)
    return f"CPU {cpu_name()} x{os.cpu_count()}"


def name_slug(name: str) -> str:
    """A short, file-safe form of a device model's name (part of the default study name)."""
    name = re.sub(r"\(R\)|\(TM\)|CPU @.*|Processor|NVIDIA ", "", name)
    return re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower()[:40]
