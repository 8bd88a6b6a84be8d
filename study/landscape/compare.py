"""The sampler comparison on recorded tables: every sampler x seed, then the figures and a
markdown table (median and IQR of evaluations to within 2%, scores at fixed budgets)."""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from study.landscape.metrics import (
    WITHIN,
    best_so_far,
    evaluations_to,
    expected_random_best,
    expected_random_evaluations,
    score,
    scored_budgets,
    strategy_best,
)
from study.landscape.objective import run_study
from study.landscape.space import ReplaySpace
from study.landscape.table import Table


def _stats(values: list[float], miss: float) -> tuple[float, float, float]:
    """(median, first quartile, third quartile), a miss (inf) counted as `miss` (budget + 1)."""
    arr = np.array(values, dtype=float)
    arr[np.isinf(arr)] = miss
    q1, med, q3 = np.percentile(arr, [25, 50, 75], method="linear")
    return float(med), float(q1), float(q3)


def _fmt_count(value: float, budget: int) -> str:
    """A count of evaluations; a miss (counted as budget + 1) is "> budget"."""
    return f">{budget}" if not math.isfinite(value) or value > budget else f"{value:g}"


def compare(
    tables: list[Table],
    samplers: list[str],
    seeds: int,
    base_seed: int = 0,
    budget: int | None = None,
    storage_url: str | None = None,
    sampler_options: dict[str, Any] | None = None,
    max_trials: int | None = None,
    timeout_s: float | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run every sampler x seed on every table; return the figures per table and sampler."""
    storage = None
    if storage_url:
        from study.storage import open_storage

        storage = open_storage(storage_url)
    out: dict[str, Any] = {"tables": []}
    for table in tables:
        space = ReplaySpace(table)
        n = table.size
        target = table.optimum * (1 + WITHIN)
        cap = min(budget, n) if budget is not None else n
        ks, unreached = scored_budgets(n, cap)
        entry: dict[str, Any] = {
            "table": str(table.path),
            "rows": n,
            "failed_rows": int(np.isnan(table.latency).sum()),
            "optimum_us": table.optimum,
            "within_2pct_rows": int((table.latency <= target).sum()),
            "budget": cap,
            "budgets": ks,
            "unreached_budgets": unreached,
            "random": {str(k): expected_random_best(table.latency, k) for k in ks},
            "random_evals_to_2pct": expected_random_evaluations(table.latency, target),
            "samplers": {},
        }
        for name in samplers:
            started = time.perf_counter()
            runs = []
            for s in range(base_seed, base_seed + seeds):
                study_name = None
                if storage is not None:
                    study_name = f"replay-{table.path.stem}-{name}-seed{s}"
                runs.append(
                    run_study(
                        table,
                        name,
                        s,
                        storage=storage,
                        study_name=study_name,
                        budget=cap,
                        max_trials=max_trials,
                        timeout_s=timeout_s,
                        sampler_options=sampler_options,
                        stop_at=target,
                        min_evaluations=min(cap, max(ks)),
                        space=space,
                    )
                )
            evals = [evaluations_to(r.trace, target) for r in runs]
            trials = [float(r.trials_to_target or math.inf) for r in runs]
            med, q1, q3 = _stats(evals, cap + 1)
            tmed = float(np.median(trials))  # inf where half the seeds or more missed
            scores = {
                str(k): score(
                    strategy_best([r.trace for r in runs], k, table.worst),
                    entry["random"][str(k)],
                    table.optimum,
                )
                for k in ks
            }
            entry["samplers"][name] = {
                "evals_to_2pct": evals,
                "median_evals": med,
                "iqr_evals": [q1, q3],
                "median_trials": tmed,
                "reached": int(sum(math.isfinite(e) for e in evals)),
                "scores": scores,
                "curves": [best_so_far(r.trace, table.worst).tolist() for r in runs],
                "seconds": round(time.perf_counter() - started, 2),
            }
            if progress:
                print(
                    f"  {table.path.name} {name}: median {_fmt_count(med, cap)} evaluations to 2% "
                    f"({entry['samplers'][name]['seconds']} s)",
                    file=sys.stderr,
                )
        out["tables"].append(entry)
    out["seeds"] = seeds
    out["samplers"] = samplers
    return out


def markdown(result: dict[str, Any]) -> str:
    """The comparison as one markdown table per recorded table."""
    lines = []
    for entry in result["tables"]:
        n = entry["rows"]
        ks = entry["budgets"]
        cap = entry.get("budget", n)
        unreached = entry.get("unreached_budgets", [])
        note = ""
        if unreached:
            left_out = ", ".join(f"{k} ({round(100 * k / n)}%)" for k in unreached)
            note = (
                f" Budget {cap} evaluations: scores at {left_out} of the rows are left out (no "
                f"run went past {cap}); the score at {cap} is given instead."
            )
        lines += [
            f"### {Path(entry['table']).name}",
            "",
            f"{n} rows ({entry['failed_rows']} failed), optimum {entry['optimum_us']:.1f} us, "
            f"{entry['within_2pct_rows']} row(s) within 2% of it; {result['seeds']} seeds; "
            f"random search needs {entry['random_evals_to_2pct']:.1f} evaluations on average "
            f"(exact); a miss is > {cap}.{note}",
            "",
            "| sampler | evals to 2% (median) | IQR | reached | trials to 2% (median) | "
            + " | ".join(f"score @{k} ({round(100 * k / n)}%)" for k in ks)
            + " |",
            "|---|---|---|---|---|" + "---|" * len(ks),
        ]
        for name, s in entry["samplers"].items():
            q1, q3 = s["iqr_evals"]
            lines.append(
                f"| {name} | {_fmt_count(s['median_evals'], cap)} | "
                f"{_fmt_count(q1, cap)}-{_fmt_count(q3, cap)} | {s['reached']}/{result['seeds']} | "
                f"{s['median_trials']:g} | ".replace("inf", "-")
                + " | ".join(f"{s['scores'][str(k)]:.2f}" for k in ks)
                + " |"
            )
        lines.append("")
    return "\n".join(lines)
