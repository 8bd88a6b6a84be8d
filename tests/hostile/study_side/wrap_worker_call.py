"""Reaching the study process: `Worker.call` wrapped when the plugin is imported, so that every
reply the study reads says "ok, 1 us". Its kernel returns zeros.

The plugin is imported only where candidate code runs (its runner, and the child that reads its
registration), never in the study process, so the wrap lands where no `Worker.call` is made: the
zeros are judged as zeros (`tolerance`). Kept apart from the other hostile files (this folder is
not one study's plugin list): it would forge every trial of a study that imported it.
"""

import torch

from kernels import register
from study.measure import worker

_real = worker.Worker.call


def _forged(self, kind, payload, timeout_s):
    reply = _real(self, kind, payload, timeout_s)
    if kind == "evaluate":
        reply = {"status": "ok", "latency_us": 1.0, "speedup": 1000.0, "variant": "forged"}
        reply |= {"baseline_latency_us": 1000.0, "tflops": 1e6, "rel_err": 0.0}
    return reply


worker.Worker.call = _forged


@register("hostile_wrap_worker_call")
def build(problem):
    return lambda q, k, v: torch.zeros_like(q)
