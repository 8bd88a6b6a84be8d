"""The environment fingerprint: what a measurement depends on, stored with the study.

Computed inside the worker (the process that touches the device), compared on resume: a study's
numbers are only comparable on the same device model and software stack.
"""

from __future__ import annotations

import os
import platform
import socket
import subprocess
from typing import Any

from kernels import cpu_name, device_name, name_slug

# What must match for two runs to share a study; the rest is recorded, not compared.
COMPARED = ("device_name", "torch", "triton", "cuda", "cudnn")


def _driver() -> str | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout else None
    except (OSError, subprocess.SubprocessError):
        return None


def fingerprint(device: str) -> dict[str, Any]:
    import torch

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    info: dict[str, Any] = {
        "device": device,
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda": torch.version.cuda,
        "cudnn": None,
        "python": platform.python_version(),
        "host": socket.gethostname(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    if device.startswith("cuda"):
        index = torch.device(device).index or 0
        props = torch.cuda.get_device_properties(index)
        info.update(
            device_name=device_name(torch.device("cuda", index)),
            capability=".".join(map(str, torch.cuda.get_device_capability(index))),
            sm_count=props.multi_processor_count,
            memory_gib=round(props.total_memory / 2**30, 1),
            cudnn=str(torch.backends.cudnn.version()),
            driver=_driver(),
        )
    else:
        info["device_name"] = device_name(torch.device("cpu"))
    return info


def device_slug(env: dict[str, Any]) -> str:
    """A short, file-safe name for the device model of a fingerprint (kernels.name_slug)."""
    return name_slug(str(env.get("device_name", "unknown")))


def differences(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    return [
        f"{key}: {stored.get(key)!r} -> {current.get(key)!r}"
        for key in COMPARED
        if stored.get(key) != current.get(key)
    ]
