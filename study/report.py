"""What a study found: the top-k table, the re-timing verdict, and the run folder's files.

Every figure written here comes from a trial or a re-timing of this study; nothing is typed in.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

SUSPICIOUS_SPEEDUP = 10.0


def counts(study: optuna.Study) -> dict[str, int]:
    result = {state.name: 0 for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
    for trial in study.get_trials(deepcopy=False):
        result[trial.state.name] = result.get(trial.state.name, 0) + 1
    return result


def measured_complete(study: optuna.Study) -> list[FrozenTrial]:
    """COMPLETE trials that were measured (not copies of an earlier verdict), best first."""
    trials = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.user_attrs.get("measured") and t.value is not None
    ]
    return sorted(trials, key=lambda t: t.value)  # type: ignore[arg-type, return-value]


def row_of(trial: FrozenTrial) -> dict[str, Any]:
    attrs = trial.user_attrs
    return {
        "trial": trial.number,
        "candidate": attrs.get("label", attrs.get("variant")),
        "variant": attrs.get("variant"),
        "spec": attrs.get("spec"),
        "latency_us": attrs.get("latency_us"),
        "latency_iqr_us": attrs.get("latency_iqr_us"),
        "baseline_latency_us": attrs.get("baseline_latency_us"),
        "speedup": attrs.get("speedup"),
        "tflops": attrs.get("tflops"),
        "rel_err": attrs.get("rel_err"),
    }


def top_k(study: optuna.Study, k: int) -> list[dict[str, Any]]:
    return [row_of(t) for t in measured_complete(study)[:k]]


def _fmt(value: Any, spec: str) -> str:
    if value is None:
        return "-"
    try:
        return format(value, spec)
    except (TypeError, ValueError):
        return str(value)


def table(rows: list[dict[str, Any]], retimed: dict[int, dict[str, Any]] | None = None) -> str:
    """A plain-text table (terminal and Markdown alike)."""
    header = [
        "#",
        "trial",
        "candidate",
        "latency us",
        "IQR us",
        "SDPA us",
        "speedup",
        "TFLOP/s",
        "rel err",
    ]
    if retimed:
        header += ["re-timed us", "re-timed speedup"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for rank, row in enumerate(rows, 1):
        cells = [
            str(rank),
            str(row["trial"]),
            str(row["candidate"]),
            _fmt(row["latency_us"], ".1f"),
            _fmt(row["latency_iqr_us"], ".1f"),
            _fmt(row["baseline_latency_us"], ".1f"),
            _fmt(row["speedup"], ".3f") + "x" if row["speedup"] else "-",
            _fmt(row["tflops"], ".3g"),
            _fmt(row["rel_err"], ".1e"),
        ]
        if retimed:
            again = retimed.get(row["trial"], {})
            cells += [
                _fmt(again.get("latency_us"), ".1f"),
                _fmt(again.get("speedup"), ".3f") + "x" if again.get("speedup") else "-",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def flags(rows: list[dict[str, Any]], roofline_tflops: float | None) -> list[str]:
    """Results that deserve suspicion before anyone quotes them."""
    notes = []
    for row in rows:
        if row["speedup"] and row["speedup"] > SUSPICIOUS_SPEEDUP:
            notes.append(
                f"trial {row['trial']}: speedup {row['speedup']:.1f}x over SDPA is above "
                f"{SUSPICIOUS_SPEEDUP:.0f}x: check it by hand before quoting it"
            )
        if roofline_tflops and row["tflops"] and row["tflops"] > roofline_tflops:
            notes.append(
                f"trial {row['trial']}: {row['tflops']:.0f} TFLOP/s is above the device's "
                f"peak of {roofline_tflops:.0f}: impossible, the timing is wrong"
            )
    return notes


def write_run_folder(
    run_dir: Path, results: dict[str, Any], markdown: str, config_yaml: str
) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    (run_dir / "report.md").write_text(markdown)
    (run_dir / "config.yaml").write_text(config_yaml)
