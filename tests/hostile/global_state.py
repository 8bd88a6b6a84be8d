"""Slowing the baseline by changing global flags: threads, denormals, SDPA backends, precision,
a torch function mode that slows every later SDPA call."""

import time

import torch
from torch.overrides import TorchFunctionMode

from kernels import register
from tests.hostile._common import honest


def _flag_setter(name):
    setters = {
        "threads": lambda: torch.set_num_threads(1),
        "flush_denormal": lambda: torch.set_flush_denormal(True),
        "sdpa_flash_off": lambda: torch.backends.cuda.enable_flash_sdp(False),
        "matmul_precision": lambda: torch.set_float32_matmul_precision("medium"),
        "default_dtype": lambda: torch.set_default_dtype(torch.float64),
    }
    return setters[name]


def _make(name):
    @register(f"hostile_state_{name}")
    def build(problem):
        change = _flag_setter(name)

        def run(q, k, v):
            out = honest(problem, q, k, v)
            change()
            return out

        return run


for _name in ("threads", "flush_denormal", "sdpa_flash_off", "matmul_precision", "default_dtype"):
    _make(_name)


class SlowSDPA(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch.nn.functional.scaled_dot_product_attention:
            time.sleep(0.001)
        return func(*args, **(kwargs or {}))


@register("hostile_state_function_mode")
def build_mode(problem):
    def run(q, k, v):
        out = honest(problem, q, k, v)
        SlowSDPA().__enter__()  # never exited: stays on the mode stack
        return out

    return run


@register("hostile_state_late_thread")
def build_late(problem):
    import threading

    started = []

    def run(q, k, v):
        if not started:
            started.append(True)
            threading.Timer(0.02, lambda: torch.backends.cuda.enable_flash_sdp(False)).start()
        return honest(problem, q, k, v)

    return run
