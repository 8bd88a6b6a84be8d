"""Re-timing the study's best candidates before a verdict names one.

Each candidate is re-timed in its own fresh worker process (nothing the study's worker compiled,
cached or leaked carries over), in `rounds` paired measurements against SDPA with fresh inputs
each (every round builds, gates and times again; rounds after the first gate one input set).
The rounds' pairs are pooled: the re-timed
paired speedup is their median (over the quieter half of all of them: a round that ran in a
burst of load counts less), its 95% interval a bootstrap that resamples within each round
(study/measure/pairing.py `paired_median`, `bootstrap_ci`). A candidate that fails or is
rejected in any round is reported as such and never confirmed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from kernels import Problem
from study import registration
from study.measure import pairing, timing
from study.measure.contain import Sandbox
from study.measure.worker import Worker, evaluate_task
from study.objective import call_timeout, trial_seed

KEPT = ("status", "error", "rejected_by", "detail", "variant", "timing")


def _pooled(rounds: list[dict[str, Any]], key: str) -> tuple[list[float], list[float], list[int]]:
    """The pairs (candidate us, baseline us) of every round, and each one's round."""
    cands: list[float] = []
    bases: list[float] = []
    groups: list[int] = []
    for number, result in enumerate(rounds):
        for cand, base in result.get(key, []):
            cands.append(cand)
            bases.append(base)
            groups.append(number)
    return cands, bases, groups


def summarise(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One re-timed candidate: its rounds' results -> one result with a pooled interval.

    The keys are a trial's (`latency_us`, `baseline_latency_us`: medians over the rounds'
    medians; `speedup`: their ratio; `paired_speedup`, `speedup_ci`: pooled pairs), so that
    `timing.chosen` reads a summary as it reads a trial; plus `rounds` and `round_speedups`.
    """
    if not rounds:
        return {"status": "error", "error": "not re-timed", "rounds": 0}
    for result in rounds:
        if result.get("status") != "ok":
            failed = {k: result[k] for k in KEPT if k in result}
            return failed | {"rounds": len(rounds)}
    out: dict[str, Any] = {k: rounds[0][k] for k in KEPT if k in rounds[0]}
    out["rounds"] = len(rounds)
    for key in ("latency_us", "baseline_latency_us", "latency_b2b_us", "baseline_latency_b2b_us"):
        values = [float(r[key]) for r in rounds if key in r]
        if values:
            out[key] = float(np.median(values))
    out["speedup"] = out["baseline_latency_us"] / out["latency_us"]
    for key, speedup, ci in (
        ("pairs_us", "paired_speedup", "speedup_ci"),
        ("blocks_us", "b2b_speedup", "b2b_speedup_ci"),
    ):
        cands, bases, groups = _pooled(rounds, key)
        if cands:
            out[speedup] = pairing.paired_median(cands, bases)
            out[ci] = list(pairing.bootstrap_ci(cands, bases, groups))
    out["round_speedups"] = [timing.chosen(r)[0] for r in rounds]
    if "paired_speedup" not in out:
        out.update(status="error", error="re-timing gave no usable pair of repetitions")
    return out


def retime(
    rows: list[dict[str, Any]],
    problem: Problem,
    bench: dict[str, Any],
    run_dir: Path,
    seed: int,
    plugins: list[str],
    rounds: int,
    timeout_s: float,
    memory_limit_gb: float | None = None,
    build_timeout_s: float = 0.0,
    sandbox: Sandbox | None = None,
    registry: dict[str, registration.VariantInfo] | None = None,
) -> dict[int, dict[str, Any]]:
    """Re-time each row's spec in its own fresh worker; {trial number: summary}.

    `timeout_s` per round, plus `build_timeout_s` for compile-tagged variants (as in a trial);
    the tags come from `registry` (the registration child's answer: this process never imports a
    plugin), and each worker is contained by `sandbox` as the study's is.
    """
    again: dict[int, dict[str, Any]] = {}
    for row in rows:
        number = int(row["trial"])
        tags = getattr((registry or {}).get(row["spec"]["variant"]), "tags", ())
        limit = call_timeout(tags, timeout_s, build_timeout_s)
        worker = Worker(
            problem.device, plugins, run_dir / f"retime-{number}.log", memory_limit_gb, sandbox
        )
        results: list[dict[str, Any]] = []
        try:
            for index in range(rounds):
                # the first round gates as a trial does; later ones one input set (the gate is
                # most of a round's time on a CPU; every round spot-checks its timed outputs)
                task = evaluate_task(
                    problem,
                    row["spec"],
                    bench if index == 0 else bench | {"check_sets": 1},
                    trial_seed(seed + 1 + index, number),
                    f"re-time trial {number} round {index + 1}/{rounds}",
                )
                result = worker.call("evaluate", task, limit)
                result.pop("log", None)
                results.append(result)
                if result.get("status") != "ok":
                    break
        finally:
            worker.stop()
        again[number] = summarise(results)
    return again
