"""`python -m study.record [run overrides] out=PATH.csv`: measure every candidate into a table.

The table is what `study.replay` searches (docs/architecture.md; the format and its writer:
study/landscape/table.py): one row per distinct valid effective candidate of the configured space
(`SearchSpace.candidates()`, what an exhaustive search measures), one column per dimension of
the flat encoding that the row uses (`variant`, `<variant>.<param>`, `mut.<mutation>`; a tunable
of another variant is left empty: it is inert for that row), then the result columns
(`RESULT_COLUMNS`). `latency_us` is empty when the candidate was incorrect
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

import datetime as dt
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

from study import cli, integrity, registration
from study.config import ConfigError, to_container
from study.landscape.table import RESULT_COLUMNS, merge_rounds, param_columns, row_for, write_table
from study.measure.worker import Worker, evaluate_task
from study.objective import call_timeout, trial_seed
from study.space import build_space

USAGE = "usage: python -m study.record [run overrides] out=PATH.csv [rounds=N]"


def record(overrides: list[str], out: Path, rounds: int = 1) -> int:
    setup = cli.setup(overrides)
    cfg, device, problem, plugins, bench = (
        setup.cfg,
        setup.device,
        setup.problem,
        setup.plugins,
        setup.bench,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    logs = Path("outputs/record")
    sandbox = integrity.sandbox_for(cfg.worker, protected=[out, logs])
    reading = registration.Reading(
        plugins, [problem], to_container(cfg.space).get("params"), sandbox
    )
    worker = Worker(device, plugins, logs / f"{out.stem}.worker.log", sandbox=sandbox)
    started = time.time()
    try:
        reply = worker.call("env", {}, 300)
        if reply.get("status") != "ok":
            reading.result()  # a plugin that cannot be imported says why
            raise ConfigError(f"the worker could not start on {device}: {reply.get('error')}")
        env = reply["env"]
        registry = reading.result()

        def ask_supports(names: list[str]) -> dict[str, str | None]:
            return {name: registry[name].supports(problem) for name in names}

        space = build_space(problem, to_container(cfg.space), registry, ask_supports)
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
                "value_us: reference_baseline_us (the median SDPA baseline of the table's rows) "
                "/ paired_speedup, microseconds, as a live study's value (empty: "
                "incorrect/failed); latency_us: median candidate latency; with rounds > 1 the "
                "medians over rounds of each round's figures, and latency_iqr_us the IQR of "
                "the per-round latency medians"
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
                task = evaluate_task(
                    problem,
                    candidate.to_dict(),
                    bench,
                    trial_seed(int(cfg.seed), index + round_no * len(candidates)),
                    f"record {index}: {candidate.label()}",
                )
                timeout = call_timeout(
                    registry[candidate.variant].tags,
                    float(cfg.worker.timeout_s),
                    float(cfg.worker.build_timeout_s),
                )
                result = worker.call("evaluate", task, timeout)
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


@cli.command(USAGE, interrupted="interrupted: the rows measured so far are in the table")
def main(args: list[str]) -> int:
    opts, overrides = cli.options(args, ("out", "rounds"), USAGE, overrides=True)
    rounds = opts.get("rounds", "1")
    out = opts.get("out")
    if not rounds.isdigit() or int(rounds) < 1:
        raise ConfigError(f"rounds={rounds} must be a positive integer")
    if not out:
        raise ConfigError(f"out=PATH.csv is required; {USAGE}")
    if not out.endswith(".csv"):
        raise ConfigError(f"out={out} must name a .csv file")
    return record(overrides, Path(out), int(rounds))


if __name__ == "__main__":
    sys.exit(main())
