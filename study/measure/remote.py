"""The judge's side of a runner: the gate's `Caller` and the two sides of paired timing.

`RemoteCaller` places the gate's inputs in the runner's input arena, asks for one call and copies
the output out of the runner's output arena into the judge's own memory before the gate looks at
it. `RemoteSide` is one side of `timing.measure_pair`: it asks its runner to time one call on a
buffer, measures the wall time around the request on the judge's own clock (`walls`: reported
and wall microseconds per timed call, checked by study/measure/wallcheck.py), stops the other
side's process group for the duration (nothing of the candidate runs while the baseline does,
and the reverse), and hands a copy of the output to `sink`.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from typing import Any

import torch

from kernels import Problem
from study.measure import timing
from study.measure.gate import LATE_DELAY_S, Called, synchronize
from study.measure.guard import Rejected
from study.measure.procs import Deadline, RunnerProcess, cpu_seconds, descendants
from study.measure.shared import Arena, Desc

LATE_JOIN_S = 5.0  # after a wrong output: how long the candidate's side threads may take to end
Sink = Callable[[str, int, "torch.Tensor | None", "dict[str, Any] | None"], None]


class RunnerFailed(Exception):
    """The runner answered with an error (the candidate raised); `str(exc)` is its one line."""

    def __init__(self, reply: dict[str, Any]) -> None:
        super().__init__(str(reply.get("error") or "unknown error"))
        self.reply = reply


def answer(reply: dict[str, Any]) -> dict[str, Any]:
    """`reply` where it is "ok"; Rejected or RunnerFailed otherwise."""
    status = reply.get("status")
    if status == "ok":
        return reply
    if status == "rejected":
        raise Rejected(str(reply.get("rejected_by", "unknown")), str(reply.get("detail", "")))
    raise RunnerFailed(reply)


class RemoteCaller:
    """The gate's `Caller` for a candidate in a runner process."""

    def __init__(
        self,
        problem: Problem,
        runner: RunnerProcess,
        inputs: Arena,
        outputs: Arena,
        deadline: Deadline,
    ) -> None:
        self.problem = problem
        self.runner = runner
        self.inputs = inputs
        self.outputs = outputs
        self.deadline = deadline
        self.keys = itertools.count()

    def _slot(self) -> Desc:
        return self.outputs.empty(self.problem.q_shape(), self.problem.dtype)

    def _run(
        self, descs: tuple[Desc, ...], values: tuple[torch.Tensor, ...], meanwhile: Callable
    ) -> Called:
        slot, key = self._slot(), next(self.keys)
        synchronize(self.problem)  # the inputs are written before the runner reads them
        self.runner.send("gate", {"inputs": list(descs), "slot": slot, "key": key})
        extra = meanwhile()  # e.g. the reference, computed while the candidate runs
        reply = answer(self.runner.receive(self.deadline))
        early = self.outputs.view(slot).clone() if reply["copied"] else None
        written = [
            name
            for name, desc, value in zip("qkv", descs, values, strict=True)
            if not torch.equal(self.inputs.view(desc), value)
        ]
        return Called(reply["meta"], early, written, key, extra, descs)

    def call(self, values: tuple[torch.Tensor, ...], meanwhile: Callable[[], Any]) -> Called:
        return self._run(self.inputs.place(values), values, meanwhile)

    def again(
        self, earlier: Called, values: tuple[torch.Tensor, ...], meanwhile: Callable[[], Any]
    ) -> Called:
        with torch.no_grad():
            for desc, value in zip(earlier.place, values, strict=True):
                self.inputs.view(desc).copy_(value)
        return self._run(earlier.place, values, meanwhile)

    def late(self, called: Called) -> torch.Tensor | None:
        return self.reread([called], join_s=LATE_JOIN_S)[0]

    def reread(self, calls: list[Called], join_s: float = 0.0) -> list[torch.Tensor | None]:
        slots = [self._slot() for _ in calls]
        payload: dict[str, Any] = {"pairs": [(c.key, s) for c, s in zip(calls, slots, strict=True)]}
        payload |= {"delay": LATE_DELAY_S, "join_s": join_s}
        reply = answer(self.runner.request("reread", payload, self.deadline))
        return [
            self.outputs.view(s).clone() if ok else None
            for s, ok in zip(slots, reply["copied"], strict=True)
        ]


class CpuWatch:
    """CPU time the candidate's processes use while the baseline runs (they should use none:
    the candidate's process group is stopped then; a process that left the group is not).

    `find` lists those processes (default: the runner and its descendants; the judge passes
    `Runners.strays`, which also finds the orphans it adopted as their subreaper)."""

    def __init__(self, runner: RunnerProcess, find: Callable[[], list[int]] | None = None) -> None:
        self.runner = runner
        self.find = find
        self.pids: list[int] = []
        self.cpu_s = 0.0
        self.wall_s = 0.0
        self.refresh()

    def refresh(self) -> None:
        if self.find is not None:
            self.pids = self.find()
        elif self.runner.pid:
            self.pids = [self.runner.pid, *descendants(self.runner.pid)]

    def before(self) -> float:
        return cpu_seconds(self.pids)

    def after(self, before: float, wall_s: float) -> None:
        self.cpu_s += max(0.0, cpu_seconds(self.pids) - before)
        self.wall_s += wall_s


class RemoteSide:
    """One side of paired timing, run in a runner process (see the module docstring).

    `args` are the judge's views of the candidate's buffers, as `measure_pair` passes them
    around: `id(args[i][0])` names buffer i on both sides.
    """

    times_itself = True  # timing.Timer takes the runner's own time for it (`timed_call`)

    def __init__(
        self,
        name: str,
        problem: Problem,
        runner: RunnerProcess,
        arenas: tuple[Arena, Arena],
        buffers: list[tuple[Desc, ...]],
        args: list[tuple[torch.Tensor, ...]],
        deadline: Deadline,
        sink: Sink,
    ) -> None:
        self.name = name
        self.problem = problem
        self.runner = runner
        self.inputs, self.outputs = arenas
        self.buffers = buffers
        self.index_of = {id(a[0]): i for i, a in enumerate(args)}
        self.deadline = deadline
        self.sink = sink
        self.slot = self.outputs.empty(problem.q_shape(), problem.dtype)
        self.others: list[RunnerProcess] = []  # stopped while this side runs
        self.watch: CpuWatch | None = None
        self.walls: list[tuple[float, float]] = []  # (reported us, wall us) per call
        self.block_walls: list[tuple[float, float]] = []  # the same per back-to-back block
        self.timed_us: list[float] = []  # the timed calls' reported us (warm-up left out)

    def _request(self, index: int, calls: int = 0) -> tuple[dict[str, Any], float]:
        synchronize(self.problem)  # the judge's writes (inputs, cache flush) are done
        payload = {"inputs": list(self.buffers[index]), "slot": self.slot}
        kind = "timed_block" if calls else "timed"
        if calls:
            payload["calls"] = calls
        self.runner.resume()
        started = time.perf_counter_ns()
        reply = self.runner.request(kind, payload, self.deadline)
        wall_us = (time.perf_counter_ns() - started) / 1e3
        return answer(reply), wall_us

    def __call__(self, *args: torch.Tensor) -> None:
        """A warm-up call: not in the statistics, but its wall time is checked like the rest."""
        reply, wall_us = self._request(self.index_of[id(args[0])])
        self.walls.append((float(reply["us"]), wall_us))

    def time_once(
        self, index: int, calls: int = 0
    ) -> tuple[float, float, torch.Tensor | None, Any]:
        """One timed call on buffer `index` (or a back-to-back block of `calls` calls), the
        other side stopped: (reported us per call, wall us, a copy of the (last) output or
        None, facts about it where it was not copied)."""
        for other in self.others:
            other.pause()
        before = self.watch.before() if self.watch else 0.0
        reply, wall_us = self._request(index, calls)
        if self.watch:
            self.watch.after(before, wall_us / 1e6)
        out = self.outputs.view(self.slot).clone() if reply["copied"] else None
        return float(reply["us"]), wall_us, out, reply.get("meta")

    def timed_call(self, *args: torch.Tensor) -> timing.Reported:
        index = self.index_of[id(args[0])]
        us, wall_us, out, meta = self.time_once(index)
        self.walls.append((us, wall_us))
        self.timed_us.append(us)
        self.sink(self.name, index, out, meta)
        return timing.Reported(us, out)

    def timed_block(self, *args: torch.Tensor, calls: int) -> timing.Reported:
        """A back-to-back block (timing.Timer.time_block) run in the runner: its per-call time;
        its last output screened like a timed call's; the block's total checked against the
        wall time around it."""
        index = self.index_of[id(args[0])]
        us, wall_us, out, meta = self.time_once(index, calls)
        self.block_walls.append((us * calls, wall_us))
        self.sink(self.name, index, out, meta)
        return timing.Reported(us, out)
