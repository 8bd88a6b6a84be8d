"""`python -m study.record [run overrides] out=PATH.csv`: measure every candidate into a table.

`out=PATH.json` or `PATH.json.gz` (or `format=kerneltuner`) writes the table as a Kernel Tuner
cache file instead (study/landscape/kerneltuner.py says how the table maps onto one; our
provenance is inside it, under `kernel_study`), which Kernel Tuner's simulation mode and
`study.replay` both read.

The table is what `study.replay` searches (docs/architecture.md; the format and its writer:
study/landscape/table.py): one row per distinct valid effective candidate of the configured space
(`SearchSpace.candidates()`, what an exhaustive search measures), one column per dimension of
the flat encoding that the row uses (`variant`, `<variant>.<param>`, `mut.<mutation>`; a tunable
of another variant is left empty: it is inert for that row), then the result columns
(`RESULT_COLUMNS`). `latency_us` is empty when the candidate was incorrect
(`status=rejected`, `rejected_by` names the check) or could not be built or run
(`status=error`). Every candidate is built, gated and timed against SDPA by the same worker and
harness as a live trial, with the same per-trial input seed (`trial_seed(seed, row)`).

A provenance side file PATH.json (for a CSV) records the device and software versions, the
date, the problem, the space, the bench settings and the overrides. The table is rewritten after
each measurement, so an interrupted recording keeps what it measured.

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
from study.errors import UserError
from study.landscape import kerneltuner
from study.landscape.table import (
    RESULT_COLUMNS,
    ReplayError,
    load_table,
    merge_rounds,
    param_columns,
    row_for,
    write_table,
)
from study.measure.worker import Worker, evaluate_task
from study.objective import call_timeout, trial_seed
from study.space import build_space

USAGE = (
    "usage: python -m study.record [run overrides] out=PATH.csv|PATH.json[.gz] [rounds=N] "
    "[format=csv|kerneltuner]"
)
FORMATS = ("csv", "kerneltuner")


def format_of(out: str, given: str | None) -> str:
    """The table format: `given`, else the one `out`'s name says; a mismatch is a user error."""
    by_name = (
        "csv" if out.endswith(".csv") else "kerneltuner" if kerneltuner.is_cache_path(out) else None
    )
    if given is not None and given not in FORMATS:
        raise ConfigError(f"format={given} is not known; known: {', '.join(FORMATS)}")
    if by_name is None:
        raise ConfigError(
            f"out={out} must name a .csv file or a Kernel Tuner cache (.json, .json.gz)"
        )
    if given is not None and given != by_name:
        suffix = ".csv" if given == "csv" else ".json or .json.gz"
        raise ConfigError(f"out={out} does not fit format={given} (its name must end {suffix})")
    return by_name


class CacheWriter:
    """Keeps a Kernel Tuner cache in step with the CSV that record writes as it measures."""

    def __init__(self, out: Path, problem: Any, device_name: str) -> None:
        self.out, self.problem, self.device_name = out, problem, device_name
        self.error: str | None = None

    def update(self, table_csv: Path, provenance: dict[str, Any]) -> None:
        try:
            table = load_table(table_csv)
        except ReplayError as exc:  # e.g. every row so far failed: no cache can hold that yet
            self.error = str(exc)
            return
        self.error = None
        p = self.problem
        data = kerneltuner.from_table(
            table,
            device_name=self.device_name,
            kernel_name=f"attention {p.signature()}",
            problem_size=[p.batch, p.heads_q, p.heads_kv, p.seq_q, p.seq_kv, p.head_dim],
            extra=provenance,
        )
        kerneltuner.write(self.out, data)


def record(overrides: list[str], out: Path, rounds: int = 1, fmt: str = "csv") -> int:
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
        # a cache is converted from the CSV after each measurement; the CSV lives with the logs
        table_csv = out if fmt == "csv" else logs / f"{out.name}.table.csv"
        cache = CacheWriter(out, problem, str(env.get("device_name"))) if fmt != "csv" else None

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
                counts = write_table(table_csv, columns, space, candidates, results)
                if cache is not None:
                    cache.update(table_csv, provenance)
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
    if cache is None:
        out.with_suffix(".json").write_text(json.dumps(provenance, indent=2, default=str) + "\n")
        print(f"wrote {out} and {out.with_suffix('.json')}: {counts}", file=sys.stderr)
        return 0
    cache.update(table_csv, provenance)
    if cache.error is not None:
        raise UserError(f"no Kernel Tuner cache written: {cache.error} (the rows: {table_csv})")
    print(
        f"wrote {out} (a Kernel Tuner cache; the rows as CSV: {table_csv}): {counts}",
        file=sys.stderr,
    )
    return 0


@cli.command(USAGE, interrupted="interrupted: the rows measured so far are in the table")
def main(args: list[str]) -> int:
    opts, overrides = cli.options(args, ("out", "rounds", "format"), USAGE, overrides=True)
    rounds = opts.get("rounds", "1")
    out = opts.get("out")
    if not rounds.isdigit() or int(rounds) < 1:
        raise ConfigError(f"rounds={rounds} must be a positive integer")
    if not out:
        raise ConfigError(f"out=PATH.csv is required; {USAGE}")
    fmt = format_of(out, opts.get("format"))
    return record(overrides, Path(out), int(rounds), fmt)


if __name__ == "__main__":
    sys.exit(main())
