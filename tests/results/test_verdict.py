"""Ranking and verdict under drift, deterministically: a synthetic clock instead of a real one.

The candidates are truly 1.3x, 1.0x and 0.8x default SDPA. The machine's speed drifts: each
trial runs at its own speed (the 0.8x candidate in a quiet minute, the 1.3x one in a slow one,
so that absolute latencies rank them backwards) and, inside a trial, the speed moves from call to
call (a ramp, bursts, jitter), always for both sides of a pair alike. The real objective, search
space, grid sampler, paired timer, re-timing summary and verdict run on it; only the clock and
the kernels are synthetic (the gate is not what is tested here): the built-in `chunked`
variant's tunable only names them, chunk 64 being the 1.3x kernel, 128 the 1.0x one, and so on.
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np
import optuna
import pytest
import torch

import kernels
from kernels import Problem
from study import retime
from study.measure import timing
from study.objective import Objective
from study.results import report, verdict
from study.search import make_sampler
from study.space import build_space

PROBLEM = Problem(batch=1, heads_q=1, heads_kv=1, seq_q=2048, seq_kv=8, head_dim=4, dtype="float32")
SDPA_US = 1000.0
BENCH = {
    "warmup": 1,
    "min_reps": 20,
    "max_reps": 60,
    "target_spread": 0.01,
    "time_cap_s": 60.0,
    "b2b_blocks": 0,
    "timing": "per_call",
}
TRUE = {64: 1.3, 128: 1.0, 256: 0.8, 512: 1.31, 1024: 0.99}  # chunk -> true speedup
CHUNK = {speedup: chunk for chunk, speedup in TRUE.items()}
# the machine's speed factor during each candidate's trial: adversarial on purpose
TRIAL_SPEED = {1.3: 4.0, 1.0: 2.5, 0.8: 1.0, 1.31: 3.0, 0.99: 1.5}


class Kernel:
    """A call that takes `cost_us` of work (times the machine's speed) and returns an output."""

    def __init__(self, cost_us: float) -> None:
        self.cost_us = cost_us

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return q


class SyntheticTimer:
    """timing.Timer's interface on a virtual clock whose speed drifts for both sides alike."""

    def __init__(self, speed: float, seed: int) -> None:
        self.speed = speed
        self.clock_us = 0.0
        self.rng = np.random.default_rng(seed)

    def factor(self) -> float:
        ramp = 1.0 + 0.5 * math.sin(self.clock_us / 20_000.0)  # slow drift within the trial
        burst = 3.0 if (self.clock_us // 7_000) % 5 == 0 else 1.0  # a neighbour's busy phase
        return self.speed * ramp * burst

    def time_call(self, fn: Kernel, args: tuple[Any, ...]) -> tuple[float, Any]:
        us = fn.cost_us * self.factor() * float(self.rng.lognormal(0.0, 0.05))
        self.clock_us += us
        return us, fn(*args)

    def time_block(self, fn: Kernel, args: tuple[Any, ...], calls: int) -> tuple[float, Any]:
        return self.time_call(fn, args)


class SyntheticWorker:
    """`Worker.call("evaluate", ...)` with the synthetic clock: the paired timer, its fields."""

    def __init__(self, rounds_drift: bool = False) -> None:
        self.calls = 0
        self.rounds_drift = rounds_drift  # re-timing: each round at another speed

    def call(self, kind: str, task: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        assert kind == "evaluate"
        self.calls += 1
        true = TRUE[task["candidate"]["params"]["chunk"]]
        speed = TRIAL_SPEED[true] * (1.0 + 0.5 * (self.calls % 3) * self.rounds_drift)
        buffers = [tuple(torch.zeros(PROBLEM.q_shape()) for _ in range(3))]
        pair = timing.measure_pair(
            PROBLEM,
            Kernel(SDPA_US / true),
            Kernel(SDPA_US),
            buffers,
            task["bench"],
            timer=SyntheticTimer(speed, int(task["seed"])),  # type: ignore[arg-type]
        )
        return {"status": "ok", "tflops": 1.0, "rel_err": 0.0, **pair.fields()}


def run_synthetic_study(speedups: list[float]) -> tuple[optuna.Study, dict[float, int]]:
    space = build_space(
        PROBLEM,
        {"variants": ["chunked"], "params": {"chunked": {"chunk": [CHUNK[s] for s in speedups]}}},
        kernels.variants(),
        lambda names: dict.fromkeys(names),
    )
    worker = SyntheticWorker()
    objective = Objective(
        space, worker, PROBLEM, BENCH, 0, 10.0, extra_attrs={"device_name": "Synthetic CPU"}
    )
    study = optuna.create_study(sampler=make_sampler({"name": "grid"}, space, 0))
    study.optimize(objective, n_trials=len(speedups))
    trials = {TRUE[t.user_attrs["spec"]["params"]["chunk"]]: t.number for t in study.trials}
    return study, trials


def retimed(study: optuna.Study, rows: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    worker = SyntheticWorker(rounds_drift=True)
    again = {}
    for row in rows:
        rounds = [
            worker.call(
                "evaluate",
                {"candidate": row["spec"], "bench": BENCH, "seed": 100 + index + row["trial"]},
                10.0,
            )
            for index in range(3)
        ]
        again[row["trial"]] = retime.summarise(rounds)
    return again


@pytest.fixture(scope="module", autouse=True)
def quiet_optuna():
    optuna.logging.set_verbosity(optuna.logging.ERROR)


def test_drift_fools_absolute_latency_but_not_the_paired_value() -> None:
    study, trials = run_synthetic_study([1.3, 1.0, 0.8])
    by_latency = sorted(study.trials, key=lambda t: t.user_attrs["latency_us"])
    assert by_latency[0].number == trials[0.8]  # the slowest kernel looked fastest
    ranked = [row["trial"] for row in report.top_k(study, 3)]
    assert ranked == [trials[1.3], trials[1.0], trials[0.8]]
    reference = study.user_attrs["reference_baseline_us"]
    assert list(reference) == ["synthetic-cpu/per_call"]
    for trial in study.trials:
        attrs = trial.user_attrs
        true = TRUE[attrs["spec"]["params"]["chunk"]]
        lo, hi = attrs["speedup_ci"]
        assert lo < true < hi, (true, lo, hi)
        assert attrs["reference_baseline_us"] == reference["synthetic-cpu/per_call"]
        assert (
            trial.value
            == attrs["value_us"]
            == pytest.approx(attrs["reference_baseline_us"] / attrs["paired_speedup"])
        )


def test_verdict_names_the_truly_faster_candidate() -> None:
    study, trials = run_synthetic_study([1.3, 1.0, 0.8])
    rows = report.top_k(study, 3)
    answer = verdict.decide(rows, retimed(study, rows))
    assert answer.kind == verdict.WINNER
    assert answer.trial == trials[1.3] and answer.candidate == "chunked(chunk=64)"
    assert answer.tied_with == []
    assert answer.retimed_ci[0] > 1.0 and answer.ci[0] > 1.0
    assert answer.retimed_ci[0] < 1.3 < answer.retimed_ci[1]
    pattern = (
        r"chunked\(chunk=64\) is the fastest correct candidate: 1\.\d\dx default SDPA "
        r"\[1\.\d\d, 1\.\d\d\], confirmed in a fresh process \(in the study: 1\.\d\dx "
        r"\[1\.\d\d, 1\.\d\d\]\)\.$"
    )
    assert re.match(pattern, answer.sentence), answer.sentence


def test_verdict_keeps_sdpa_when_nothing_is_faster() -> None:
    study, trials = run_synthetic_study([1.0, 0.8])
    rows = report.top_k(study, 2)
    assert [r["trial"] for r in rows] == [trials[1.0], trials[0.8]]
    answer = verdict.decide(rows, retimed(study, rows))
    assert answer.kind == verdict.KEEP_SDPA
    assert answer.trial == trials[1.0]
    assert answer.retimed_ci[0] < 1.0 < answer.retimed_ci[1]
    pattern = (
        r"default SDPA is the fastest correct choice here; the best alternative, "
        r"chunked\(chunk=128\), measured (0\.9\d|1\.0\d)x \[0\.9\d, 1\.\d\d\] \(re-timed in a "
        r"fresh process: a tie with SDPA, the interval includes 1\)\.$"
    )
    assert re.match(pattern, answer.sentence), answer.sentence


def test_two_confirmed_candidates_within_noise_are_a_tie() -> None:
    study, trials = run_synthetic_study([1.3, 1.31, 0.99])
    rows = report.top_k(study, 3)
    answer = verdict.decide(rows, retimed(study, rows))
    assert answer.kind == verdict.WINNER
    assert {answer.trial, *[trials[s] for s in (1.3, 1.31) if s != answer.trial]} == {
        trials[1.3],
        trials[1.31],
    }
    other = "chunked(chunk=64)" if answer.trial == trials[1.31] else "chunked(chunk=512)"
    assert answer.tied_with == [other]
    assert f"; a tie with {other} (1." in answer.sentence


def row(trial: int, speedup: float, ci: list[float]) -> dict[str, Any]:
    return {"trial": trial, "candidate": f"c{trial}", "paired_speedup": speedup, "speedup_ci": ci}


def summary(speedup: float, ci: list[float], status: str = "ok") -> dict[str, Any]:
    return {"status": status, "paired_speedup": speedup, "speedup_ci": ci}


@pytest.mark.parametrize(
    ("rows", "again", "kind", "trial", "why"),
    [
        # faster in the study only: the fresh process does not confirm it
        (
            [row(0, 1.2, [1.1, 1.3])],
            {0: summary(1.02, [0.97, 1.08])},
            "keep_sdpa",
            0,
            "a tie with SDPA",
        ),
        # confirmed in a fresh process only: the study's own trial was not sure
        ([row(0, 1.1, [0.9, 1.3])], {0: summary(1.2, [1.1, 1.3])}, "keep_sdpa", 0, "not above 1"),
        # slower everywhere
        ([row(0, 0.8, [0.7, 0.9])], {0: summary(0.8, [0.75, 0.85])}, "keep_sdpa", 0, "slower"),
        # the study's best failed its re-timing; the second is confirmed and named
        (
            [row(0, 2.0, [1.8, 2.2]), row(1, 1.5, [1.4, 1.6])],
            {0: {"status": "rejected"}, 1: summary(1.5, [1.4, 1.6])},
            "winner",
            1,
            "",
        ),
        # never re-timed
        ([row(0, 1.5, [1.4, 1.6])], {}, "keep_sdpa", 0, "not confirmed in a fresh process"),
    ],
)
def test_verdict_rules(rows, again, kind, trial, why) -> None:
    answer = verdict.decide(rows, again)
    assert (answer.kind, answer.trial) == (kind, trial)
    assert why in answer.sentence


def test_no_correct_candidate_keeps_sdpa() -> None:
    answer = verdict.decide([], {})
    assert answer.kind == verdict.KEEP_SDPA and answer.trial is None
    assert answer.sentence.startswith("default SDPA is the fastest correct choice here")
