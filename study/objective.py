"""The Optuna objective: params -> effective candidate -> worker -> trial state and user attrs.

The value minimised is the candidate's median latency in microseconds (`latency_us`): absolute
time is what a user wants to minimise, and it keeps CUDA-graph candidates comparable with eager
ones. Each trial also stores the SDPA baseline measured beside it and the ratio (`speedup`).

States: COMPLETE (correct and timed), PRUNED (ran but incorrect: `rejected_by`), FAIL (could
not be built or run: `error`). An effective candidate already measured in this study is not
measured again: the trial copies the earlier verdict and names it in `duplicate_of`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from kernels import Problem
from study.measure.worker import Worker, evaluate_task
from study.space import Candidate, SearchSpace

COMPILE_TAG = "compile"  # a variant whose build compiles (torch.compile): it gets a build budget


def call_timeout(tags: tuple[str, ...], timeout_s: float, build_timeout_s: float) -> float:
    """One evaluation's wall-clock limit: `timeout_s` (`worker.timeout_s`), plus the build budget
    `build_timeout_s` (`worker.build_timeout_s`) for variants tagged COMPILE_TAG, whose build
    alone can take minutes (max-autotune over many shapes) and would otherwise time out."""
    return timeout_s + (build_timeout_s if COMPILE_TAG in tags else 0.0)


RESULT_ATTRS = (
    "latency_us",
    "latency_iqr_us",
    "latency_min_us",
    "baseline_latency_us",
    "baseline_latency_iqr_us",
    "speedup",
    "tflops",
    "rel_err",
    "max_err",
    "err_bound",
    "build_s",
    "reps",
    "wall_s",
    "paired_speedup",
    "spot_checks",
    "gate_sets",
)


class CandidateFailed(Exception):
    """The candidate could not be built or run; the trial ends FAIL with `error`."""


def trial_seed(base_seed: int, number: int) -> int:
    """A new input seed per trial, reproducible from the study seed and the trial number."""
    return (base_seed * 1_000_003 + number * 7_919 + 17) % (2**31 - 1)


class Objective:
    def __init__(
        self,
        space: SearchSpace,
        worker: Worker,
        problem: Problem,
        bench: dict[str, Any],
        seed: int,
        timeout_s: float,
        extra_attrs: dict[str, Any] | None = None,
        on_result: Callable[[FrozenTrial | None, dict[str, Any]], None] | None = None,
        build_timeout_s: float = 0.0,
    ) -> None:
        self.space = space
        self.worker = worker
        self.problem = problem
        self.bench = bench
        self.seed = seed
        self.timeout_s = timeout_s
        self.extra_attrs = extra_attrs or {}
        self.on_result = on_result
        self.build_timeout_s = build_timeout_s

    def __call__(self, trial: optuna.Trial) -> float:
        encoded = self.space.suggest(trial)
        candidate = self.space.decode(encoded)
        key = candidate.key()
        trial.set_user_attr("variant", candidate.variant)
        trial.set_user_attr("spec", candidate.to_dict())
        trial.set_user_attr("spec_key", key)
        trial.set_user_attr("label", candidate.label())
        for name, value in self.extra_attrs.items():
            trial.set_user_attr(name, value)

        reason = self.space.invalid_reason(candidate)
        if reason:
            trial.set_user_attr("rejected_by", "invalid_params")
            trial.set_user_attr("detail", reason)
            trial.set_user_attr("measured", False)
            raise optuna.TrialPruned(reason)

        earlier = self._measured_before(trial, key)
        if earlier is not None:
            return self._repeat(trial, earlier)

        seed = trial_seed(self.seed, trial.number)
        trial.set_user_attr("seed", seed)
        task = evaluate_task(
            self.problem,
            candidate.to_dict(),
            self.bench,
            seed,
            f"trial {trial.number}: {candidate.label()}",
        )
        tags = next(v.tags for v in self.space.variants if v.name == candidate.variant)
        timeout = call_timeout(tags, self.timeout_s, self.build_timeout_s)
        try:
            result = self.worker.call("evaluate", task, timeout)
        except KeyboardInterrupt:
            # Optuna marks the trial FAIL and re-raises; say why in the record.
            trial.set_user_attr("error", "interrupted: the study was stopped (SIGINT) mid-trial")
            trial.set_user_attr("measured", False)
            raise
        return self._record(trial, candidate, result)

    def _measured_before(self, trial: optuna.Trial, key: str) -> FrozenTrial | None:
        states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
        for other in trial.study.get_trials(deepcopy=False, states=states):
            if other.user_attrs.get("spec_key") == key and other.user_attrs.get("measured"):
                return other
        return None

    def _repeat(self, trial: optuna.Trial, earlier: FrozenTrial) -> float:
        trial.set_user_attr("duplicate_of", earlier.number)
        trial.set_user_attr("measured", False)
        for name in RESULT_ATTRS + ("rejected_by", "detail", "error"):
            if name in earlier.user_attrs:
                trial.set_user_attr(name, earlier.user_attrs[name])
        if earlier.state == TrialState.COMPLETE:
            assert earlier.value is not None
            return earlier.value
        if earlier.state == TrialState.PRUNED:
            raise optuna.TrialPruned(f"same candidate as trial {earlier.number}")
        raise CandidateFailed(f"same candidate as trial {earlier.number}, which failed")

    def _record(self, trial: optuna.Trial, candidate: Candidate, result: dict[str, Any]) -> float:
        trial.set_user_attr("measured", True)
        if result.get("log"):
            trial.set_user_attr("log_tail", result["log"][-1500:])
        status = result.get("status")
        if self.on_result is not None:
            self.on_result(None, result)
        if status == "ok":
            for name in RESULT_ATTRS:
                if name in result:
                    trial.set_user_attr(name, result[name])
            return float(result["latency_us"])
        if "build_s" in result:
            trial.set_user_attr("build_s", result["build_s"])
        if status == "rejected":
            trial.set_user_attr("rejected_by", result.get("rejected_by", "unknown"))
            trial.set_user_attr("detail", result.get("detail", ""))
            raise optuna.TrialPruned(result.get("detail", ""))
        error = str(result.get("error") or "unknown error").splitlines()[0]
        trial.set_user_attr("error", error)
        raise CandidateFailed(error)
