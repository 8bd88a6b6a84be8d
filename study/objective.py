"""The Optuna objective: params -> effective candidate -> worker -> trial state and user attrs.

The value minimised (`value_us`) comes from the paired measurement: the reference SDPA latency
of the study on this device model divided by the trial's paired speedup (the median of the
per-pair ratios baseline/candidate, study/measure/timing.py). A machine whose speed drifts
(neighbours, clocks, thermals; several cards of one model) moves both sides of every pair, so a
trial measured in a slow minute ranks where it would in a quiet one, and one worker per GPU
normalises by its own card; it is still a latency in microseconds (what the candidate takes
when SDPA takes the reference), comparable across variants and CUDA-graph candidates alike.
The reference (`reference_baseline_us`, in the study's user attrs per device model and timing)
is the fastest SDPA repetition of the first trial measured there (its least loaded moment, so
that the value is near the candidate's latency on a quiet machine), fixed from then on; every
trial records the reference its value used. The raw figures (`latency_us`,
`baseline_latency_us`, `speedup`) are kept as user attrs, with the 95% bootstrap interval of the
paired speedup (`speedup_ci`).

States: COMPLETE (correct and timed), PRUNED (ran but incorrect: `rejected_by`), FAIL (could
not be built or run: `error`). An effective candidate already measured in this study is not
measured again: the trial copies the earlier verdict and names it in `duplicate_of`. As a trial
ends, `sealer` (study/seal.py) stores the digest of its verdict: state, value and attrs.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from kernels import Problem
from study.errors import signal_name
from study.measure import timing
from study.measure.env import device_slug
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
    "baseline_latency_min_us",
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
    "value_us",
    "reference_baseline_us",
    "speedup_ci",
    "baseline_order_ratio",
    "timing",
    "latency_b2b_us",
    "baseline_latency_b2b_us",
    "b2b_speedup",
    "b2b_speedup_ci",
    "b2b_calls",
    "screened",
    "candidate_cpu_ms",
    "baseline_slowdown",
    "baseline_interference",
    "wall_retried",
)
# What a study's value is (stored with the study; a study of another objective is not resumed).
OBJECTIVE = "value_us: reference SDPA latency / paired speedup, microseconds"
REFERENCE_ATTR = "reference_baseline_us"
_REFERENCE_LOCK = threading.Lock()  # one study process, several workers: one reference


class CandidateFailed(Exception):
    """The candidate could not be built or run; the trial ends FAIL with `error`."""


def reference_key(device_name: str, timing_mode: str) -> str:
    """The key of a study's reference baseline: the device model's slug and the timing."""
    return f"{device_slug({'device_name': device_name})}/{timing_mode}"


def study_reference(study: optuna.Study, key: str, measured_us: float) -> float:
    """The study's reference SDPA latency for `key`; the first call sets it to `measured_us`.

    Serialised within one process; two machines whose first trials end at the same moment may
    both set it, and the last write stays: each trial records the reference its value used.
    """
    with _REFERENCE_LOCK:
        known = dict(study.user_attrs.get(REFERENCE_ATTR, {}))
        if key not in known:
            known[key] = float(measured_us)
            study.set_user_attr(REFERENCE_ATTR, known)
        return float(known[key])


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
        sealer: Callable[[optuna.Trial, TrialState, float | None], None] | None = None,
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
        self.references: dict[str, float] = {}
        self.sealer = sealer

    def __call__(self, trial: optuna.Trial) -> float:
        """Judge the trial, then seal the verdict in the state Optuna will give it."""
        try:
            value = self._judge(trial)
        except optuna.TrialPruned:
            self._seal(trial, TrialState.PRUNED, None)
            raise
        except BaseException:
            self._seal(trial, TrialState.FAIL, None)
            raise
        self._seal(trial, TrialState.COMPLETE, value)
        return value

    def _seal(self, trial: optuna.Trial, state: TrialState, value: float | None) -> None:
        if self.sealer is not None:
            self.sealer(trial, state, value)

    def _judge(self, trial: optuna.Trial) -> float:
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
        except KeyboardInterrupt as exc:
            # Optuna marks the trial FAIL and re-raises; say why in the record.
            why = f"interrupted: the study was stopped ({signal_name(exc)}) mid-trial"
            trial.set_user_attr("error", why)
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
            speedup, _ = timing.chosen(result)
            if not (math.isfinite(speedup) and speedup > 0):
                raise CandidateFailed("timing gave no usable pair of repetitions")
            mode = str(result.get("timing", "per_call"))
            key = reference_key(str(self.extra_attrs.get("device_name", "unknown")), mode)
            if key not in self.references:  # fixed once set: read from the storage once
                self.references[key] = study_reference(
                    trial.study, key, timing.reference_figure(result)
                )
            reference = self.references[key]
            result = result | {"value_us": reference / speedup, "reference_baseline_us": reference}
            for name in RESULT_ATTRS:
                if name in result:
                    trial.set_user_attr(name, result[name])
            return float(result["value_us"])
        if "build_s" in result:
            trial.set_user_attr("build_s", result["build_s"])
        if status == "rejected":
            trial.set_user_attr("rejected_by", result.get("rejected_by", "unknown"))
            trial.set_user_attr("detail", result.get("detail", ""))
            raise optuna.TrialPruned(result.get("detail", ""))
        error = str(result.get("error") or "unknown error").splitlines()[0]
        trial.set_user_attr("error", error)
        raise CandidateFailed(error)
