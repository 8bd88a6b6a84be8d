"""The one-sentence answer of a study: which correct candidate is fastest, or keep SDPA.

A candidate is named only when its paired speedup over default SDPA is above 1 with 95%
confidence twice: in its study trial (the trial's bootstrap interval) and when re-timed in a
fresh process (study/retime.py: the pooled interval of several rounds). Among the confirmed
candidates the fastest re-timed one is named; confirmed candidates whose re-timed intervals
overlap the winner's are tied with it, and the sentence says so. Otherwise the answer is to keep
SDPA, with the best alternative's figure and why it is not named (a tie with SDPA, slower, or
faster in one measurement only). Every figure comes from the trials' and re-timing's own
attributes (`timing.chosen`: the timing the study's value uses).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from study.measure import timing

WINNER = "winner"
KEEP_SDPA = "keep_sdpa"


def interval_text(speedup: float | None, ci: list[float] | None) -> str:
    """`1.31x [1.25, 1.37]`; `-` where nothing was measured."""
    if speedup is None or not math.isfinite(float(speedup)):
        return "-"
    text = f"{float(speedup):.2f}x"
    if ci and all(c is not None and math.isfinite(float(c)) for c in ci):
        text += f" [{float(ci[0]):.2f}, {float(ci[1]):.2f}]"
    return text


def _above_one(ci: list[float] | None) -> bool:
    return bool(ci) and ci[0] is not None and math.isfinite(ci[0]) and ci[0] > 1.0


def _overlap(a: list[float], b: list[float]) -> bool:
    return a[0] <= b[1] and b[0] <= a[1]


def measured(result: dict[str, Any] | None) -> tuple[float, list[float]] | None:
    """(speedup, interval) of a trial's attrs or a re-timing summary; None if not measured ok."""
    if not result or result.get("status", "ok") != "ok" or "paired_speedup" not in result:
        return None
    speedup, ci = timing.chosen(result)
    if not math.isfinite(speedup):
        return None
    return speedup, [float(c) for c in ci]


@dataclass
class Verdict:
    kind: str  # WINNER or KEEP_SDPA
    sentence: str
    trial: int | None = None  # the winner, or the best alternative
    candidate: str | None = None
    speedup: float | None = None  # in the study (its trial)
    ci: list[float] | None = None
    retimed_speedup: float | None = None
    retimed_ci: list[float] | None = None
    tied_with: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _figures(row: dict[str, Any], again: dict[int, dict[str, Any]]) -> dict[str, Any]:
    study = measured(row)
    retimed = measured(again.get(row["trial"]))
    return {
        "trial": row["trial"],
        "candidate": str(row["candidate"]),
        "speedup": study[0] if study else None,
        "ci": study[1] if study else None,
        "retimed_speedup": retimed[0] if retimed else None,
        "retimed_ci": retimed[1] if retimed else None,
    }


def decide(rows: list[dict[str, Any]], again: dict[int, dict[str, Any]]) -> Verdict:
    """The verdict over the top rows (report.row_of) and their re-timing ({trial: summary})."""
    if not rows:
        return Verdict(
            KEEP_SDPA,
            "default SDPA is the fastest correct choice here: no correct alternative was measured",
        )
    figures = [_figures(row, again) for row in rows]
    confirmed = [f for f in figures if _above_one(f["ci"]) and _above_one(f["retimed_ci"])]
    if confirmed:
        best = max(confirmed, key=lambda f: f["retimed_speedup"])
        tied = [
            f for f in confirmed if f is not best and _overlap(f["retimed_ci"], best["retimed_ci"])
        ]
        sentence = (
            f"{best['candidate']} is the fastest correct candidate: "
            f"{best['retimed_speedup']:.2f}x default SDPA "
            f"[{best['retimed_ci'][0]:.2f}, {best['retimed_ci'][1]:.2f}], "
            f"confirmed in a fresh process (in the study: "
            f"{interval_text(best['speedup'], best['ci'])})"
        )
        if tied:
            sentence += (
                "; a tie with "
                + ", ".join(
                    f"{f['candidate']} ({interval_text(f['retimed_speedup'], f['retimed_ci'])})"
                    for f in tied
                )
                + ": the intervals overlap, either is as fast"
            )
        return Verdict(WINNER, sentence + ".", tied_with=[f["candidate"] for f in tied], **best)
    retimed = [f for f in figures if f["retimed_speedup"] is not None]
    if retimed:
        best = max(retimed, key=lambda f: f["retimed_speedup"])
        speedup, ci = best["retimed_speedup"], best["retimed_ci"]
    else:
        best = figures[0]
        speedup, ci = best["speedup"], best["ci"]
    sentence = (
        "default SDPA is the fastest correct choice here; the best alternative, "
        f"{best['candidate']}, measured {interval_text(speedup, ci)}"
    )
    return Verdict(KEEP_SDPA, f"{sentence} ({_why_not(best, ci)}).", **best)


def _why_not(best: dict[str, Any], ci: list[float] | None) -> str:
    """Why the best alternative is not named (KEEP_SDPA)."""
    if best["retimed_speedup"] is None:
        return "in the study; not confirmed in a fresh process"
    if ci and math.isfinite(ci[1]) and ci[1] < 1.0:
        return "slower than SDPA, re-timed in a fresh process"
    if _above_one(ci):
        return (
            "re-timed in a fresh process; its study trial measured "
            f"{interval_text(best['speedup'], best['ci'])}, not above 1 with confidence"
        )
    return "re-timed in a fresh process: a tie with SDPA, the interval includes 1"
