"""What a study found: the top-k table, flags, the re-timing verdict, and the run folder's files.

Also report.md (`markdown_report`), the dashboard note (`note_markdown`) and the reproduce
command; which backend SDPA's default dispatch picked is study/results/dispatch.py. Every figure
written here comes from a trial or a re-timing of this study; nothing is typed in.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from study.results import verdict as judge
from study.results.dispatch import closest_by_timing
from study.results.verdict import interval_text

SUSPICIOUS_SPEEDUP = 10.0
ORDER_EFFECT = 1.5  # flag a baseline whose time moved this much with the call before it
# per-trial figures that the table, the verdict and results.json read from a trial's attrs
ROW_KEYS = (
    "value_us",
    "latency_us",
    "latency_iqr_us",
    "baseline_latency_us",
    "speedup",
    "paired_speedup",
    "speedup_ci",
    "timing",
    "latency_b2b_us",
    "baseline_latency_b2b_us",
    "b2b_speedup",
    "b2b_speedup_ci",
    "baseline_order_ratio",
    "tflops",
    "rel_err",
    "baseline_interference",
)


def counts(study: optuna.Study) -> dict[str, int]:
    result = {state.name: 0 for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
    for trial in study.get_trials(deepcopy=False):
        result[trial.state.name] = result.get(trial.state.name, 0) + 1
    return result


def measured(study: optuna.Study) -> list[FrozenTrial]:
    """COMPLETE trials that this study measured, in trial order.

    `measured` must be true: a copy of an earlier verdict has it false, and a trial without it
    was not measured by study/objective.py at all (a replay study's table lookups share the
    storage; a trial added by hand): neither is quoted, exported or plotted.
    """
    return [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.user_attrs.get("measured") and t.value is not None
    ]


def measured_complete(study: optuna.Study) -> list[FrozenTrial]:
    """The measured COMPLETE trials, best (lowest value: highest paired speedup) first."""
    return sorted(measured(study), key=lambda t: t.value)  # type: ignore[arg-type, return-value]


def row_of(trial: FrozenTrial) -> dict[str, Any]:
    attrs = trial.user_attrs
    return {
        "trial": trial.number,
        "candidate": attrs.get("label", attrs.get("variant")),
        "variant": attrs.get("variant"),
        "spec": attrs.get("spec"),
    } | {k: attrs.get(k) for k in ROW_KEYS}


def top_k(study: optuna.Study, k: int) -> list[dict[str, Any]]:
    return [row_of(t) for t in measured_complete(study)[:k]]


def _fmt(value: Any, spec: str) -> str:
    if value is None:
        return "-"
    try:
        return format(value, spec)
    except (TypeError, ValueError):
        return str(value)


def _interval(result: dict[str, Any] | None) -> str:
    figures = judge.measured(result)
    return interval_text(*figures) if figures else "-"


def table(rows: list[dict[str, Any]], retimed: dict[int, dict[str, Any]] | None = None) -> str:
    """A plain-text table (terminal and Markdown alike)."""
    header = ["#", "trial", "candidate", "value us", "latency us", "SDPA us"]
    header += ["paired speedup [95% CI]", "TFLOP/s", "rel err"]
    if retimed:
        header += ["re-timed [95% CI]", "rounds"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for rank, row in enumerate(rows, 1):
        cells = [
            str(rank),
            str(row["trial"]),
            str(row["candidate"]),
            _fmt(row.get("value_us"), ".1f"),
            _fmt(row["latency_us"], ".1f"),
            _fmt(row["baseline_latency_us"], ".1f"),
            _interval(row),
            _fmt(row["tflops"], ".3g"),
            _fmt(row["rel_err"], ".1e"),
        ]
        if retimed:
            again = retimed.get(row["trial"], {})
            ok = again.get("status") == "ok"
            cells += [
                _interval(again) if ok else str(again.get("status", "-")),
                _fmt(again.get("rounds"), "d"),
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def flags(rows: list[dict[str, Any]]) -> list[str]:
    """Results that deserve suspicion before anyone quotes them."""
    notes = []
    for row in rows:
        figures = judge.measured(row)
        speedup = figures[0] if figures else None
        if speedup and speedup > SUSPICIOUS_SPEEDUP:
            notes.append(
                f"trial {row['trial']}: speedup {speedup:.1f}x over SDPA is above "
                f"{SUSPICIOUS_SPEEDUP:.0f}x: check it by hand before quoting it"
            )
        b2b, paired = row.get("b2b_speedup_ci"), row.get("speedup_ci")
        if b2b and paired and b2b[0] > 2 * paired[1]:
            notes.append(
                f"trial {row['trial']}: back to back {interval_text(row['b2b_speedup'], b2b)} "
                f"but {interval_text(row['paired_speedup'], paired)} per call: "
                "a block repeats its inputs, so a candidate that memoises gains there; check it"
            )
        order = row.get("baseline_order_ratio")
        if order and math.isfinite(order) and max(order, 1 / order) > ORDER_EFFECT:
            notes.append(
                f"trial {row['trial']}: SDPA took {order:.2f}x as long after the candidate as "
                "after itself: the order of the pair mattered (machine load?)"
            )
        if row.get("baseline_interference"):
            notes.append(
                f"trial {row['trial']}: load aimed at the baseline's turns: "
                f"{row['baseline_interference']}; its speedup is not to be trusted"
            )
    return notes


def ranking_verdict(rows: list[dict[str, Any]], again: dict[int, dict[str, Any]]) -> str:
    """Did the best candidates keep their order when timed again in a fresh process?"""
    timed = [(r["trial"], again[r["trial"]]) for r in rows if r["trial"] in again]
    if not timed:
        return "re-timing: not run"
    failed = [t for t, res in timed if res.get("status") != "ok"]
    if failed:
        return f"re-timing: trials {failed} did not pass again in a fresh worker: do not trust them"
    speedups = {t: (judge.measured(res) or (0.0, []))[0] for t, res in timed}
    order = sorted(speedups, key=lambda t: -speedups[t])
    first = [t for t, _ in timed]
    if order == first:
        return f"re-timing: the ranking of the top {len(timed)} held, each in a fresh worker"
    return (
        f"re-timing: the ranking changed, each in a fresh worker (was {first}, now {order}); "
        "the top candidates are within noise of each other"
    )


VALUE_TEXT = (
    "Value: reference SDPA latency / paired speedup (us). Paired speedup: median over the "
    "quieter half of the trial's pairs (SDPA and candidate interleaved on the same buffers) of "
    "SDPA / candidate, with its 95% bootstrap interval; latency and SDPA: the raw medians of "
    "the same trial."
)
TIMING_TEXT = {
    "per_call": "per call (GPU: device time of one call after an L2 flush; CPU: host time of "
    "one call, the thread pool woken first)",
    "back_to_back": "back to back (blocks of calls with nothing between them: what a model "
    "calling attention in a loop sees, launch overhead included; chosen on a GPU for a "
    "launch-bound problem)",
}


def timing_line(rows: list[dict[str, Any]]) -> str:
    modes = sorted({str(r.get("timing") or "per_call") for r in rows})
    said = "; ".join(TIMING_TEXT.get(m, m) for m in modes) or TIMING_TEXT["per_call"]
    return f"Timing of the value: {said}."


def back_to_back_lines(rows: list[dict[str, Any]]) -> list[str]:
    """Both timings of each top row, where back-to-back blocks were timed."""
    timed = [r for r in rows if r.get("b2b_speedup") is not None]
    if not timed:
        return []
    lines = [
        "Per call and back to back (us per call, candidate / SDPA; paired speedups):",
        "",
        "| trial | per call | back to back | per-call speedup | back-to-back speedup |",
        "|---|---|---|---|---|",
    ]
    for r in timed:
        lines.append(
            f"| {r['trial']} | {_fmt(r['latency_us'], '.1f')} / "
            f"{_fmt(r['baseline_latency_us'], '.1f')} | {_fmt(r['latency_b2b_us'], '.1f')} / "
            f"{_fmt(r['baseline_latency_b2b_us'], '.1f')} | "
            f"{interval_text(r['paired_speedup'], r['speedup_ci'])} | "
            f"{interval_text(r['b2b_speedup'], r['b2b_speedup_ci'])} |"
        )
    return lines + [""]


def write_run_folder(
    run_dir: Path, results: dict[str, Any], markdown: str, config_yaml: str
) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    (run_dir / "report.md").write_text(markdown)
    (run_dir / "config.yaml").write_text(config_yaml)


# -- report.md ---------------------------------------------------------------------------------
ENV_KEYS = (
    "device_name",
    "device",
    "capability",
    "sm_count",
    "memory_gib",
    "driver",
    "torch",
    "triton",
    "cuda",
    "cudnn",
    "cpu",
    "cpu_count",
    "torch_threads",
    "python",
    "host",
)


def environment_lines(env: dict[str, Any]) -> list[str]:
    return [f"- {k}: {env.get(k)}" for k in ENV_KEYS if env.get(k) not in (None, "")]


def reproduce_overrides(
    overrides: list[str], spec: dict[str, Any], problem_name: str, signature: str
) -> list[str]:
    """The run's overrides, pinned to the winner's spec, for one trial in a new study.

    Keys the pinning sets are dropped from the run's overrides (a Hydra override list must not
    set one key twice); `++` adds a `space.params` entry whether or not the space has one.
    """
    pinned = ("space.variants", "space.params", "space.mutations", "study.", "sampler")
    keep = [
        o
        for o in overrides
        if not o.lstrip("+~").split("=", 1)[0].startswith(pinned) and not o.startswith("-")
    ]
    if not any(o.split("=", 1)[0] == "problem" for o in keep) and problem_name:
        keep.insert(0, f"problem={problem_name}")
    pins = [f"space.variants=[{spec['variant']}]"]
    pins += [f"++space.params.{spec['variant']}.{k}=[{v}]" for k, v in spec["params"].items()]
    pins += [f"space.mutations.{k}=[{v}]" for k, v in spec["mutations"].items()]
    pins += ["sampler=random", "study.n_trials=1", f"study.name=reproduce-{signature}"]
    return keep + pins


def markdown_report(
    name: str,
    problem: Any,
    env: dict[str, Any],
    state_counts: dict[str, int],
    rows: list[dict[str, Any]],
    again: dict[int, dict[str, Any]],
    panel: list[dict[str, Any]],
    space_lines: list[str],
    notes: list[str],
    overrides: list[str],
    ranking: str,
    default_pick: dict[str, Any] | None = None,
    figures: dict[str, Any] | None = None,
    trials_this_run: int | None = None,
    verdict: dict[str, Any] | None = None,
) -> str:
    """report.md: every figure in it was measured in this study or this run."""
    import shlex

    verdict = verdict or {}
    lines = [f"# kernel-study report: {name}", ""]
    if verdict.get("sentence"):
        lines += [f"**{verdict['sentence']}**", ""]
    lines += ["## Environment", ""] + environment_lines(env) + [""]
    lines += [
        "## Problem",
        "",
        f"- {problem.signature()} ({problem.name or 'custom'}): q {problem.q_shape()}, "
        f"k/v {problem.kv_shape()}, {str(problem.dtype).removeprefix('torch.')}, "
        f"causal={problem.causal}, scale={problem.scale:.6g}",
        f"- {problem.flops() / 1e9:.3g} GFLOP per call (4*B*Hq*Sq*Skv*D, halved if causal), "
        f"at least {problem.min_bytes() / 1e6:.3g} MB moved (Q, K, V, O once)",
        "",
    ]
    run_note = f" ({trials_this_run} added by this run)" if trials_this_run else ""
    lines += ["## Trials", "", "In the study" + run_note + ": "]
    lines[-1] += ", ".join(f"{k}: {v}" for k, v in state_counts.items())
    lines += ["", "## SDPA backends (bhsd inputs, each timed against the default dispatch)", ""]
    lines += [
        "| backend | latency us | IQR us | default SDPA us | default / backend | status |",
        "|---|---|---|---|---|---|",
    ]
    for row in panel:
        if row.get("status") == "ok":
            lines.append(
                f"| {row['variant']} | {row['latency_us']:.1f} | {row['latency_iqr_us']:.1f} | "
                f"{row['baseline_latency_us']:.1f} | {row['speedup']:.3f}x | ok |"
            )
        else:
            why = row.get("reason") or row.get("rejected_by") or row.get("error")
            lines.append(f"| {row['variant']} | - | - | - | - | {row.get('status')}: {why} |")
    lines.append("")
    pick = default_pick or {}
    if pick.get("backend"):
        evidence = ", ".join(pick.get("ops", []) + pick.get("kernels", [])[:3])
        lines.append(
            f"Default dispatch picked: **{pick['backend']}** (torch profiler: {evidence})."
        )
    elif pick:
        lines.append(f"Default dispatch: not identified by the profiler ({pick.get('error')}).")
    near = closest_by_timing(panel)
    if near:
        lines.append(f"Nearest explicit backend by latency in the table above: {near}.")
    lines += ["", "## Top candidates", "", VALUE_TEXT, "", timing_line(rows), ""]
    lines += [table(rows, again), "", ranking, ""]
    lines += back_to_back_lines(rows)
    chosen = [r for r in rows if r["trial"] == verdict.get("trial")] or rows[:1]
    if chosen:
        spec = chosen[0]["spec"]
        args = reproduce_overrides(overrides, spec, problem.name, problem.signature())
        what = "winner" if verdict.get("kind") == "winner" else "best alternative"
        lines += [
            f"## Reproduce the {what}",
            "",
            f"The {what}: trial {chosen[0]['trial']}, `{json.dumps(spec, sort_keys=True)}`. "
            "This measures that one candidate in a new study:",
            "",
            "```",
            shlex.join(["python", "-m", "study.run", *args]),
            "```",
            "",
        ]
    figures = figures or {}
    if figures.get("files") or figures.get("skipped"):
        lines += ["## Figures", ""]
        for file in figures.get("files", []):
            if file.endswith(".png"):
                lines.append(f"![{file}]({file})")
            else:
                lines.append(f"- interactive: [{file}]({file})")
        for file, why in figures.get("skipped", {}).items():
            lines.append(f"- {file} not drawn: {why}")
        lines.append("")
    if notes:
        lines += ["## Flags", ""] + [f"- {n}" for n in notes] + [""]
    lines += ["## Search space", ""] + [f"- {d}" for d in space_lines] + [""]
    return "\n".join(lines)


def note_markdown(
    name: str,
    env: dict[str, Any],
    state_counts: dict[str, int],
    rows: list[dict[str, Any]],
    again: dict[int, dict[str, Any]],
    ranking: str,
    run_dir: Any,
    default_pick: dict[str, Any] | None = None,
    verdict: dict[str, Any] | None = None,
) -> str:
    """The dashboard note of a study: the verdict, the summary table and the environment, as of
    the last run."""
    pick = (default_pick or {}).get("backend")
    sentence = (verdict or {}).get("sentence")
    lines = [f"## {name}", ""] + ([f"**{sentence}**", ""] if sentence else [])
    lines += [
        VALUE_TEXT,
        "",
        table(rows, again),
        "",
        ranking,
        "",
        "Trials: " + ", ".join(f"{k}: {v}" for k, v in state_counts.items()),
        "",
    ]
    if pick:
        lines += [f"SDPA default dispatch picked: {pick}", ""]
    lines += ["### Environment", ""] + environment_lines(env)
    lines += ["", f"Last run folder: `{run_dir}`", ""]
    return "\n".join(lines)
