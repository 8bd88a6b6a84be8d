"""`python -m study.record [run overrides] out=PATH.csv`: measure every candidate into a table.

The table is what `study.replay` searches (see DESIGN.md, Replay): one row per distinct valid
effective candidate of the configured space (`SearchSpace.candidates()`, what an exhaustive
search measures), one column per dimension of the flat encoding that the row uses (`variant`,
`<variant>.<param>`, `mut.<mutation>`; a tunable of another variant is left empty: it is inert
for that row), then the result columns. `latency_us` is empty when the candidate was incorrect
(`status=rejected`, `rejected_by` names the check) or could not be built or run
(`status=error`). Every candidate is built, gated and timed against SDPA by the same worker and
harness as a live trial, with the same per-trial input seed (`trial_seed(seed, row)`).

A provenance side file PATH.json records the device and software versions, the date, the
problem, the space, the bench settings and the overrides. The table is rewritten after each
measurement, so an interrupted recording keeps what it measured.

`rounds=N` measures every candidate N times, each round in a new shuffled order, and keeps the
median over rounds: a minute of machine drift then moves one of a row's N figures, not the row.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import logging
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

import kernels
from study.config import ConfigError, load, to_container
from study.measure.worker import Worker
from study.objective import trial_seed
from study.space import SpaceError, build_space

USAGE = "usage: python -m study.record [run overrides] out=PATH.csv [rounds=N]"
RESULT_COLUMNS = (
    "latency_us",
    "latency_iqr_us",
    "latency_min_us",
    "baseline_latency_us",
    "speedup",
    "status",
    "rejected_by",
    "error",
)


def param_columns(space: Any) -> list[str]:
    return list(space.distributions())


def row_for(space: Any, candidate: Any, result: dict[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = {"variant": candidate.variant}
    for p, value in candidate.params.items():
        row[f"{candidate.variant}.{p}"] = value
    for m, value in candidate.mutations.items():
        row[f"mut.{m}"] = value
    status = result.get("status")
    row["status"] = {"ok": "ok", "rejected": "rejected"}.get(str(status), "error")
    if status == "ok":
        for key in ("latency_us", "latency_iqr_us", "latency_min_us", "baseline_latency_us"):
            row[key] = f"{float(result[key]):.4f}"
        row["speedup"] = f"{float(result['speedup']):.5f}"
    elif status == "rejected":
        row["rejected_by"] = result.get("rejected_by", "unknown")
    else:
        row["error"] = str(result.get("error") or "unknown error").splitlines()[0][:200]
    return row


def merge_rounds(results: list[dict[str, Any]]) -> dict[str, Any]:
    """One candidate's result over its rounds: medians of the per-round figures.

    A candidate rejected or failed in any round is rejected/failed (its first such round says
    why). With two or more rounds, `latency_iqr_us` is the IQR of the per-round medians (how much
    the candidate moved between rounds), not the spread inside one round.
    """
    for result in results:
        if result.get("status") != "ok":
            return result
    merged = dict(results[0])
    for key in ("latency_us", "baseline_latency_us", "speedup"):
        merged[key] = float(np.median([float(r[key]) for r in results]))
    merged["latency_min_us"] = min(float(r["latency_min_us"]) for r in results)
    if len(results) > 1:
        q25, q75 = np.percentile([float(r["latency_us"]) for r in results], [25, 75])
        merged["latency_iqr_us"] = float(q75 - q25)
    return merged


def write_table(
    out: Path,
    columns: list[str],
    space: Any,
    candidates: list[Any],
    results: list[list[dict[str, Any]]],
) -> dict[str, int]:
    """Write every measured candidate's merged row (atomically: a reader never sees half a file)."""
    counts = {"ok": 0, "rejected": 0, "error": 0}
    partial = out.with_suffix(".csv.partial")
    with partial.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, restval="")
        writer.writeheader()
        for candidate, measured in zip(candidates, results, strict=True):
            if measured:
                row = row_for(space, candidate, merge_rounds(measured))
                counts[row["status"]] += 1
                writer.writerow(row)
    partial.replace(out)
    return counts


def record(overrides: list[str], out: Path, rounds: int = 1) -> int:
    from study.run import problem_from

    cfg, device = load(overrides)
    plugins = [str(Path(p).expanduser().resolve()) for p in cfg.space.plugins]
    for path in plugins:
        kernels.load_plugin(path)
    problem = problem_from(cfg, device)
    bench = to_container(cfg.bench)
    out.parent.mkdir(parents=True, exist_ok=True)
    worker = Worker(device, plugins, Path("outputs/record") / f"{out.stem}.worker.log")
    started = time.time()
    try:
        reply = worker.call("env", {}, 300)
        if reply.get("status") != "ok":
            raise ConfigError(f"the worker could not start on {device}: {reply.get('error')}")
        env = reply["env"]

        def ask_supports(names: list[str]) -> dict[str, str | None]:
            answer = worker.call("supports", {"problem": problem.to_dict(), "names": names}, 300)
            if answer.get("status") != "ok":
                raise SpaceError(f"checking variants on {device} failed: {answer.get('error')}")
            return answer["answers"]

        space = build_space(problem, to_container(cfg.space), kernels.variants(), ask_supports)
        candidates = space.candidates()
        columns = param_columns(space) + list(RESULT_COLUMNS)
        provenance = {
            "what": "every distinct valid candidate of the space, measured by study.record",
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "env": env,
            "problem": problem.to_dict() | {"signature": problem.signature()},
            "space": {
                "name": cfg.space.name,
                "digest": space.digest(),
                "describe": space.describe(),
            },
            "bench": bench,
            "seed": int(cfg.seed),
            "overrides": overrides,
            "rows": len(candidates),
            "rounds": rounds,
            "load_average_at_start": list(os.getloadavg()),
            "value": (
                "latency_us: median candidate latency, microseconds (empty: incorrect/failed); "
                "with rounds > 1 the median over rounds of each round's median, and "
                "latency_iqr_us the IQR of those per-round medians"
            ),
        }
        print(
            f"recording {len(candidates)} candidates x {rounds} round(s) of "
            f"{problem.signature()} on "
            f"{env.get('device_name')} into {out}",
            file=sys.stderr,
        )
        results: list[list[dict[str, Any]]] = [[] for _ in candidates]
        order = list(range(len(candidates)))
        shuffle = random.Random(int(cfg.seed))
        for round_no in range(rounds):
            for done, index in enumerate(order):
                candidate = candidates[index]
                task = {
                    "problem": problem.to_dict(),
                    "candidate": candidate.to_dict(),
                    "bench": bench,
                    "seed": trial_seed(int(cfg.seed), index + round_no * len(candidates)),
                    "label": f"record {index}: {candidate.label()}",
                }
                result = worker.call("evaluate", task, float(cfg.worker.timeout_s))
                results[index].append(result)
                counts = write_table(out, columns, space, candidates, results)
                row = row_for(space, candidate, merge_rounds(results[index]))
                print(
                    f"  round {round_no + 1}/{rounds} [{done + 1}/{len(candidates)}] "
                    f"{candidate.label()}: "
                    f"{row.get('latency_us') or row.get('rejected_by') or row.get('error')}",
                    file=sys.stderr,
                )
            shuffle.shuffle(order)  # the next round meets drift in another order
    finally:
        worker.stop()
    provenance["counts"] = counts
    provenance["load_average_at_end"] = list(os.getloadavg())
    provenance["duration_s"] = round(time.time() - started, 1)
    out.with_suffix(".json").write_text(json.dumps(provenance, indent=2, default=str) + "\n")
    print(f"wrote {out} and {out.with_suffix('.json')}: {counts}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in args):
        print(USAGE)
        return 0
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    outs = [a.split("=", 1)[1] for a in args if a.startswith("out=")]
    rounds = ([a.split("=", 1)[1] for a in args if a.startswith("rounds=")] or ["1"])[-1]
    overrides = [a for a in args if not a.startswith(("out=", "rounds="))]
    try:
        if not rounds.isdigit() or int(rounds) < 1:
            raise ConfigError(f"rounds={rounds} must be a positive integer")
        if not outs or not outs[-1]:
            raise ConfigError(f"out=PATH.csv is required; {USAGE}")
        if not outs[-1].endswith(".csv"):
            raise ConfigError(f"out={outs[-1]} must name a .csv file")
        bad = [a for a in overrides if a.startswith("-")]
        if bad:
            raise ConfigError(f"unknown option {bad[0]}; {USAGE}")
        return record(overrides, Path(outs[-1]), int(rounds))
    except (ConfigError, SpaceError, kernels.PluginError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: the rows measured so far are in the table", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
