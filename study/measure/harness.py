"""The judge: one candidate, start to finish, from a process the candidate cannot reach.

Runs in the worker process (study/measure/worker.py), which imports no plugin and runs no
candidate code. The candidate runs in a runner process of its own (study/measure/runner.py,
started by study/measure/procs.py), the SDPA baseline in another, trusted one. Per trial:

1. inputs from a secret seed (study/measure/inputs.py `secret_seed`: the judge's secret, never
   sent to a runner), placed in shared memory (study/measure/shared.py);
2. the candidate's runner builds it; the gate (study/measure/gate.py) runs it on fresh input sets
   and judges copies of its outputs against the float64 reference, computed here;
3. paired timing (study/measure/timing.py `measure_pair`): candidate and baseline interleaved on
   the same values, each timed in its own runner with the other one stopped, every output copied
   out (study/measure/timedcheck.py: all screened against the baseline's, a secret sample checked
   in full), the reported times checked against the judge's wall clock
   (study/measure/wallcheck.py; for a plugin's candidate: the built-ins' runner never runs
   plugin code, so its clock and its reports are this project's);
4. for a plugin's candidate: its runner is killed with every process it started, and the baseline
   is timed again with no candidate process alive; load aimed at the baseline's turns is flagged.

Returns a plain dict (it crosses a pipe): status "ok" (checked and timed), "rejected" (ran, not
correct: `rejected_by`) or "error" (could not be built or run: `error`, one line).
"""

from __future__ import annotations

import os
from typing import Any

import torch

import kernels
from kernels import Problem
from kernels.mutations import Applied
from study.measure import gate, timing, wallcheck
from study.measure.guard import Rejected
from study.measure.inputs import DISTRIBUTIONS, InputPool, make_inputs, secret_seed
from study.measure.procs import Deadline, RunnerGone, RunnerProcess, Runners
from study.measure.remote import CpuWatch, RemoteCaller, RemoteSide, RunnerFailed, answer
from study.measure.runner import cuda_error
from study.measure.shared import Arena, storage_bytes
from study.measure.timedcheck import TimedCheck

# A failed wall-clock check measures the pair again (up to WALL_RETRIES times), with RETRY_REPS
# times the repetitions, blocks and time cap (and at least RETRY_MIN_REPS repetitions,
# RETRY_MIN_BLOCKS blocks: enough for the check to be decisive, wallcheck.decisive), and checks
# the new walls alone: a runner that under-reports fails every measurement, and more calls make
# its hidden time plainer; a burst of load on a shared machine seldom fails twice and hardly ever
# three times (two fresh-clone suites run side by side on 2 cores, each with multi-process
# studies, still pruned 1 honest plugin trial in about 60 after one retry).
WALL_RETRIES = 2
RETRY_REPS = 3
RETRY_MIN_REPS = 10
RETRY_MIN_BLOCKS = 6
CONTROL_REPS = 16  # baseline calls timed again with no candidate process alive
CLEANUP_S = 60.0  # the baseline's own requests after a trial (the control, the clean-up)
DEFAULT_TIMEOUT_S = 600.0


def more_reps(bench: dict[str, Any]) -> dict[str, Any]:
    """The bench settings of a wall-clock retry (see RETRY_REPS)."""
    more = dict(bench)
    more["min_reps"] = max(int(bench["min_reps"]) * RETRY_REPS, RETRY_MIN_REPS)
    more["max_reps"] = max(int(bench["max_reps"]) * RETRY_REPS, more["min_reps"])
    more["time_cap_s"] = float(bench["time_cap_s"]) * RETRY_REPS
    if int(bench.get("b2b_blocks", 0)):
        more["b2b_blocks"] = max(int(bench["b2b_blocks"]) * RETRY_REPS, RETRY_MIN_BLOCKS)
    return more


class Judge:
    """The worker's trusted half: runs the checks, owns the secret and the runner processes."""

    def __init__(self, device: str, plugins: list[str], memory_limit_gb: float | None) -> None:
        self.device = device
        self.runners = Runners(device, plugins, memory_limit_gb)
        self.secret = os.urandom(32)  # per worker; a study may send its own ("secret", hex)

    def stop(self) -> None:
        self.runners.stop()

    def kill_strays(self) -> int:
        """End every candidate process left below the judge (the worker calls it between
        requests): the judge runs no candidate code, so no candidate can switch this off."""
        return self.runners.kill_strays()

    def supports(
        self, problem_dict: dict[str, Any], names: list[str], timeout_s: float = 300.0
    ) -> dict[str, str | None]:
        """Built-in variants answer here; a plugin's, in a fresh runner (its code never runs in
        the judge)."""
        problem = Problem.from_dict(problem_dict)
        registry = kernels.variants()
        answers = {n: registry[n].supports(problem) for n in names if n in registry}
        others = [n for n in names if n not in registry]
        if others:
            runner = self.runners.candidate(builtin=False)
            try:
                payload = {"problem": problem_dict, "names": others}
                reply = runner.request("supports", payload, Deadline(timeout_s))
                answers |= answer(reply)["answers"]
            finally:
                runner.kill()
        return answers

    def evaluate(self, task: dict[str, Any]) -> dict[str, Any]:
        """Build, check and time one candidate against the SDPA baseline."""
        spec = task["candidate"]
        result: dict[str, Any] = {"status": "error", "variant": spec["variant"]}
        builtin = spec["variant"] in kernels.variants()
        runner = self.runners.ready(builtin)
        trial = Trial(self, task, runner, builtin, result)
        try:
            trial.run()
        except RunnerGone as gone:
            result.update(status="error", error=str(gone))
        except RunnerFailed as failed:
            result.update(status="error", error=f"{trial.phase} failed: {failed}")
            result["traceback"] = failed.reply.get("traceback", "")
            if failed.reply.get("cuda_error"):
                result["cuda_error"] = failed.reply["cuda_error"]
        except Rejected as rejected:
            result.update(status="rejected", rejected_by=rejected.check, detail=rejected.detail)
        finally:
            for other in (runner, self.runners.baseline):
                other.resume()
            self.runners.release(runner, healthy=result["status"] == "ok")
        if result.get("status") == "ok" and not builtin:
            trial.control()
        try:  # a trial past its limit still cleans up
            answer(self.runners.baseline.request("finish", {}, Deadline(CLEANUP_S)))
        except (RunnerGone, RunnerFailed) as exc:
            result.setdefault("note", f"baseline runner replaced: {exc}")
        broken = cuda_error(self.device)
        if broken:
            result["judge_cuda_error"] = broken  # the worker exits after replying
        return result


class Trial:
    """One `Judge.evaluate`: the phases of the module docstring, in order."""

    def __init__(
        self,
        judge: Judge,
        task: dict[str, Any],
        runner: RunnerProcess,
        builtin: bool,
        result: dict[str, Any],
    ) -> None:
        self.problem = Problem.from_dict(task["problem"])
        self.spec = task["candidate"]
        self.bench = task["bench"]
        secret = bytes.fromhex(task["secret"]) if task.get("secret") else judge.secret
        self.seeds = {p: secret_seed(secret, int(task["seed"]), p) for p in ("gate", "timed")}
        self.deadline = Deadline(float(task.get("timeout_s") or DEFAULT_TIMEOUT_S))
        self.runner, self.baseline = runner, judge.runners.baseline
        self.strays = judge.runners.strays
        self.builtin = builtin
        self.result = result
        self.phase = "build"
        self.applied = Applied(self.spec.get("mutations", {}), self.problem)
        self.base_side: RemoteSide | None = None
        self.timed: TimedCheck | None = None
        self.base_us: list[float] = []

    def _arenas(self) -> dict[str, Arena]:
        """Shared memory for the trial: the candidate's inputs and outputs, the baseline's."""
        problem, device = self.problem, self.problem.device
        one = self.applied.prepare_inputs(make_inputs(problem, 0, "normal"))
        set_bytes = storage_bytes(one)
        out = torch.empty(problem.q_shape(), dtype=problem.dtype, device="meta")
        out_bytes = storage_bytes((out,))
        gate_sets = max(int(self.bench["check_sets"]), len(DISTRIBUTIONS)) + 1
        buffers = int(self.bench["buffers"])
        arenas = {
            "c_in": Arena((gate_sets + buffers) * set_bytes, device),
            "c_out": Arena((3 * gate_sets + 2) * out_bytes, device),
            "b_in": Arena(buffers * set_bytes, device),
            "b_out": Arena(2 * out_bytes, device),
        }
        self.like = one
        return arenas

    def run(self) -> None:
        problem, result = self.problem, self.result
        arenas = self.arenas = self._arenas()
        for runner, side in ((self.runner, "c"), (self.baseline, "b")):
            for name, key in (("inputs", f"{side}_in"), ("outputs", f"{side}_out")):
                payload = {"name": name, "base": arenas[key].base}
                answer(runner.request("arena", payload, self.deadline))
        reply = answer(
            self.runner.request(
                "build", {"problem": problem.to_dict(), "candidate": self.spec}, self.deadline
            )
        )
        result["build_s"] = reply["build_s"]
        if reply.get("note"):
            result["note"] = reply["note"]

        self.phase = "run"
        caller = RemoteCaller(problem, self.runner, arenas["c_in"], arenas["c_out"], self.deadline)
        report = gate.run_gate(
            problem,
            caller,
            self.applied.prepare_inputs,
            self.seeds["gate"],
            int(self.bench["check_sets"]),
        )

        self.phase = "timing"
        baseline_spec = {"variant": "sdpa", "mutations": self.spec.get("mutations", {})}
        answer(
            self.baseline.request(
                "build", {"problem": problem.to_dict(), "candidate": baseline_spec}, self.deadline
            )
        )
        pair, timed, cand_side, base_side = self._time(report)
        reply = answer(self.runner.request("finish", {}, self.deadline))
        if reply.get("threads_left"):
            result["threads_left"] = reply["threads_left"]
        cand = pair.candidate
        result.update(pair.fields())  # timing.Pair.fields: medians, paired speedup, its interval
        result.update(
            status="ok",
            spot_checks=timed.checked,
            screened=timed.screened,
            gate_sets=report.sets,
            tflops=problem.flops() / (cand.median_us * 1e-6) / 1e12,
            rel_err=report.rel_err,
            max_err=report.max_err,
            err_bound=report.bound,
        )
        if base_side.watch is not None:
            result["candidate_cpu_ms"] = round(base_side.watch.cpu_s * 1e3, 3)
        self.base_us = list(base_side.timed_us)

    def _time(self, report: gate.GateReport) -> tuple[timing.Pair, TimedCheck, Any, Any]:
        problem, arenas = self.problem, self.arenas
        buffers = int(self.bench["buffers"])
        c_descs = [arenas["c_in"].place(self.like) for _ in range(buffers)]
        b_descs = [arenas["b_in"].place(self.like) for _ in range(buffers)]
        args = [tuple(arenas["c_in"].view(d) for d in descs) for descs in c_descs]
        pool = InputPool(self.like, self.seeds["timed"])
        bound = report.bounds.get("normal", report.bound)
        pairs = zip(c_descs, b_descs, strict=True)
        targets = [[(arenas["c_in"], c), (arenas["b_in"], b)] for c, b in pairs]
        timed = TimedCheck(problem, pool, targets, bound, self.seeds["timed"] + 1)
        cand_side = RemoteSide(
            "candidate",
            problem,
            self.runner,
            (arenas["c_in"], arenas["c_out"]),
            c_descs,
            args,
            self.deadline,
            timed.sink,
        )
        base_side = RemoteSide(
            "baseline",
            problem,
            self.baseline,
            (arenas["b_in"], arenas["b_out"]),
            b_descs,
            args,
            self.deadline,
            timed.sink,
        )
        cand_side.others, base_side.others = [self.baseline], [self.runner]
        if not self.builtin:
            base_side.watch = CpuWatch(self.runner, self.strays)
        self.base_side, self.timed = base_side, timed
        timed.fill_all()
        for attempt in range(1 + WALL_RETRIES):
            for side in (cand_side, base_side):
                side.walls, side.block_walls = [], []
            bench = self.bench if attempt == 0 else more_reps(self.bench)
            try:
                pair = timing.measure_pair(
                    problem, cand_side, base_side, args, bench, before_rep=self._hook(timed)
                )
            finally:
                self.runner.resume()
                self.baseline.resume()
            timed.finish()
            if self.builtin:  # a built-in's runner never ran plugin code: its clock is ours
                break
            try:
                self._check_walls(cand_side, base_side)
                break
            except Rejected:
                if attempt == WALL_RETRIES:
                    raise
                self.result["wall_retried"] = True  # a lie fails again; noise seldom does
        return pair, timed, cand_side, base_side

    @staticmethod
    def _check_walls(cand_side: RemoteSide, base_side: RemoteSide) -> None:
        wallcheck.check(cand_side.walls, base_side.walls)
        # a block is one request like a call (one reply, one copy out): its excess is measured
        # against the baseline's calls, a few blocks being too few for a floor of their own
        wallcheck.check(cand_side.block_walls, base_side.walls)

    def _hook(self, timed: TimedCheck) -> Any:
        watch_every = 8

        def before_rep(rep: int, index: int) -> None:
            timed.before_rep(rep, index)
            watch = self.base_side.watch if self.base_side else None
            if watch is not None and rep % watch_every == 0:
                watch.refresh()

        return before_rep

    def control(self) -> None:
        """The baseline timed again with no candidate process alive; the interference flag."""
        side, timed = self.base_side, self.timed
        if side is None or timed is None or not self.base_us:
            return
        side.deadline = Deadline(CLEANUP_S)
        watch, side.watch, side.others = side.watch, None, []
        free = []
        try:
            for rep in range(min(CONTROL_REPS, len(self.base_us))):
                index = rep % len(side.buffers)
                timed.refill(index)
                free.append(side.time_once(index)[0])
        except (RunnerGone, RunnerFailed, Rejected) as exc:
            self.result["note"] = f"no candidate-free baseline: {exc}"
            return
        slowdown, apart = wallcheck.slowdown(self.base_us, free)
        if slowdown is not None:
            self.result["baseline_slowdown"] = round(slowdown, 4)
        cpu_s, wall_s = (watch.cpu_s, watch.wall_s) if watch else (0.0, 0.0)
        reason = wallcheck.interference(cpu_s, wall_s, slowdown, apart)
        if reason:
            self.result["baseline_interference"] = reason
