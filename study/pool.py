"""Several workers in one study process: `worker.devices=all`, `=N` or `=[0,1]`.

One study process drives one Worker (a spawned process pinned to its device) per entry of
`worker.devices`, through `study.optimize(n_jobs=len(devices))`: Optuna runs one trial per thread,
and each thread borrows a free Objective, which owns one Worker. The threads only wait on pipes
(the work happens in the worker processes), so the GIL costs nothing. Several machines join the
same study through a shared storage instead (docs/scale-out.md).

All workers of one study process must be the same device model and software stack (a study never
mixes GPU models): a machine with two kinds of GPU runs one study per kind
(`worker.devices=[0]`, `worker.devices=[1]`).
"""

from __future__ import annotations

import queue
from collections.abc import Sequence
from typing import Any

import optuna

from study.config import ConfigError

SHARED_WARNING = (
    "warning: {n} workers share {device}: their timings interfere with each other "
    "(fine for a quick search; re-time the winners alone before quoting numbers)"
)


def _cuda_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _one(item: Any, device: str, count: int) -> str:
    text = str(item).strip()
    if text == "cpu":
        return "cpu"
    if text.isdigit():
        text = f"cuda:{text}"
    if text == "cuda":
        text = "cuda:0"
    if text.startswith("cuda:") and text[5:].isdigit():
        index = int(text[5:])
        if index >= count:
            raise ConfigError(f"worker.devices names {text} but {count} CUDA device(s) are visible")
        return text
    raise ConfigError(f"worker.devices entry {item!r} is not valid; use GPU indices, cuda:N or cpu")


def resolve_devices(spec: Any, device: str, count: int | None = None) -> list[str]:
    """`worker.devices` -> one device per worker.

    `auto`: the one device of `device=`. `all`: every visible GPU (on the CPU: one worker).
    `N`: N workers (the first N GPUs; on the CPU, N CPU workers, which interfere).
    `[0,1]` / `[cuda:0,cuda:2]` / `[cpu,cpu]`: exactly these.
    """
    if count is None:
        count = _cuda_count() if device.startswith("cuda") else 0
    if spec is None or str(spec).strip() in ("auto", ""):
        return [device]
    if isinstance(spec, str) and spec.strip() == "all":
        return [device] if device == "cpu" else [f"cuda:{i}" for i in range(count)]
    if isinstance(spec, (int, str)) and not isinstance(spec, bool):
        text = str(spec).strip()
        if not text.isdigit() or int(text) < 1:
            raise ConfigError(
                f"worker.devices={spec} is not valid; use auto, all, a count N >= 1 or a list"
            )
        n = int(text)
        if device == "cpu":
            return ["cpu"] * n
        if n > count:
            raise ConfigError(f"worker.devices={n} but {count} CUDA device(s) are visible")
        return [f"cuda:{i}" for i in range(n)]
    if isinstance(spec, Sequence) or hasattr(spec, "__iter__"):
        items = list(spec)
        if not items:
            raise ConfigError("worker.devices=[] names no device")
        needs_gpu = any(str(i).strip() != "cpu" for i in items)
        if needs_gpu and count == 0:
            count = _cuda_count()
            if count == 0:
                raise ConfigError(
                    f"worker.devices={items} names GPUs but no CUDA device is visible"
                )
        return [_one(item, device, count) for item in items]
    raise ConfigError(f"worker.devices={spec!r} is not valid")


def shared_warnings(devices: list[str]) -> list[str]:
    """One line per device that more than one worker uses."""
    return [
        SHARED_WARNING.format(n=devices.count(d), device="the CPU" if d == "cpu" else d)
        for d in dict.fromkeys(devices)
        if devices.count(d) > 1
    ]


class PooledObjective:
    """An objective for `study.optimize(n_jobs=len(objectives))`: each call borrows a free one.

    With n_jobs equal to the number of objectives there is always one free; a thread keeps
    no objective between trials, so a worker that finished early takes the next trial.
    """

    def __init__(self, objectives: list[Any]) -> None:
        self.free: queue.Queue[Any] = queue.Queue()
        for objective in objectives:
            self.free.put(objective)
        self.n = len(objectives)

    def __call__(self, trial: optuna.Trial) -> float:
        objective = self.free.get()
        try:
            return objective(trial)
        finally:
            self.free.put(objective)


def start_all(workers: list[Any], timeout_s: float = 300) -> list[dict[str, Any]]:
    """Start every worker (in parallel) and return their environments, checked to match.

    Raises ConfigError when a worker cannot start, or when two devices differ in what a study
    compares (device model, torch, triton, CUDA, cuDNN): those must be separate studies.
    """
    from concurrent.futures import ThreadPoolExecutor

    from study.measure.env import differences

    with ThreadPoolExecutor(max_workers=len(workers)) as pool:
        replies = list(pool.map(lambda w: w.call("env", {}, timeout_s), workers))
    envs = []
    for worker, reply in zip(workers, replies, strict=True):
        if reply.get("status") != "ok":
            raise ConfigError(
                f"the worker could not start on {worker.device}: {reply.get('error')}"
            )
        envs.append(reply["env"])
    for worker, env in zip(workers[1:], envs[1:], strict=True):
        changed = differences(envs[0], env)
        if changed:
            raise ConfigError(
                f"{workers[0].device} and {worker.device} differ ({'; '.join(changed)}): a study "
                "never mixes them; run one study per model, e.g. worker.devices=[0] and "
                "worker.devices=[1]"
            )
    return envs
