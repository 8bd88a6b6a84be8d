"""Lying to the process that judges: a forged "ok" written to the runner's pipe, then
`os._exit(0)` before anything can be checked. The forged reply says every right thing about an
output that was never written; the judge reads it as data (an answer to its own request, never a
verdict), judges what is in its output slot instead, finds it wrong, asks to read it again and
finds the runner gone: FAIL, `worker crashed: exited with status 0`."""

import gc
import os
from multiprocessing.connection import Connection

import torch

from kernels import register
from study.measure.shared import describe


@register("hostile_forged_reply")
def build(problem):
    def run(q, k, v):
        meta = describe(torch.empty_like(q)) | {"input_ptrs": []}
        for obj in gc.get_objects():
            if isinstance(obj, Connection) and not obj.closed:
                obj.send({"status": "ok", "copied": True, "meta": meta, "us": 1.0})
        os._exit(0)

    return run
