"""`python -m study.replay table=PATH.csv sampler=NAME [seeds=N budget=B ...]`: search a table.

A table is our CSV or a Kernel Tuner cache file (`.json`, `.json.gz`;
study/landscape/kerneltuner.py says how it is read). Without `sampler=`, the default sampler,
the same as study.run's (`ga`).

The table format, the replay space, the objective and the figures are in study/landscape/ (see
docs/architecture.md); this module is the command. Cost is counted in evaluations: distinct table
rows evaluated. `budget=B` stops a study after B evaluations; every study also stops when every
row was evaluated, after `study.n_trials` trials (default: 20 x rows + 100), after
`study.timeout_s` seconds, or after `study.patience` trials without improvement.

One sampler, one table: ordinary studies in the configured storage (`storage.url`, default
sqlite:///outputs/studies.db; `study.name`, `seed`; `seeds=N` runs N studies, seeds seed ..
seed+N-1, named NAME-seedS). Several samplers (`sampler=[cmaes,ga,tpe,random]`), several tables
(`table=[a.csv,b.csv]`) or `compare=true`: the comparison, in memory unless `storage.url` is
given, 20 seeds unless `seeds=` says otherwise, printing per sampler the median and IQR over seeds
of the evaluations needed to come within 2% of the table's optimum, and the
autotuning-methodology score (strategy - random) / (optimum - random) at 10%, 20% and 50% of the
table's rows, where strategy is the mean over seeds of the best latency found within that many
evaluations and random the exact expected best of that many distinct rows drawn uniformly
without replacement. A failed row counts as the table's worst latency in both. Only the
budgets that the runs reach are scored: with `budget=B` below a fraction, that fraction is left
out (and said so) and the score at B is given instead; a miss prints as "> B". Writes a
markdown table (`out=PATH.md`) and a PNG of best-so-far against evaluations (`plot=PATH.png`,
default outputs/replay/compare.png).
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import optuna

from study import cli
from study.config import group_options
from study.landscape.compare import compare, markdown
from study.landscape.kerneltuner import parse_scalar
from study.landscape.metrics import WITHIN, evaluations_to
from study.landscape.objective import run_study, sampler_config
from study.landscape.plot import plot
from study.landscape.space import ReplaySpace
from study.landscape.table import ReplayError, Table, load_table
from study.storage import DEFAULT_STORAGE

USAGE = (
    "usage: python -m study.replay table=PATH.csv sampler=NAME|[a,b,...] [seeds=N] [budget=B] "
    "[seed=N] [compare=true] [study.name=...] [storage.url=...] [study.patience=N] "
    "[study.timeout_s=S] [study.n_trials=N] [sampler.<option>=V] [out=PATH.md] [plot=PATH.png]"
)


# -- the command line -----------------------------------------------------------------------------
def _as_int(key: str, value: str, minimum: int) -> int:
    try:
        number = int(value)
    except ValueError:
        raise ReplayError(f"{key}={value} is not an integer") from None
    if number < minimum:
        raise ReplayError(f"{key} must be >= {minimum}, got {number}")
    return number


def _as_bool(key: str, value: str) -> bool:
    if value.lower() in ("true", "yes", "1"):
        return True
    if value.lower() in ("false", "no", "0"):
        return False
    raise ReplayError(f"{key}={value} is not true or false")


def _option_value(text: str) -> Any:
    if text.lower() in ("null", "none"):
        return None
    return parse_scalar(text)


KEYS = (
    "table",
    "sampler",
    "seeds",
    "seed",
    "budget",
    "compare",
    "study.name",
    "storage.url",
    "study.patience",
    "study.timeout_s",
    "study.n_trials",
    "out",
    "plot",
)


def parse(args: list[str]) -> dict[str, Any]:
    own, _ = cli.options(args, KEYS + ("sampler.name",), USAGE, prefixes=("sampler.",))
    opts: dict[str, Any] = {"sampler_options": {}}
    for key, value in own.items():
        if key.startswith("sampler.") and key != "sampler.name":
            opts["sampler_options"][key.split(".", 1)[1]] = _option_value(value)
        else:
            opts["sampler" if key == "sampler.name" else key] = value
    if not opts.get("table"):
        raise ReplayError(f"table=PATH.csv is required; {USAGE}")
    opts["tables"] = cli.as_list(opts["table"])
    from study.search import DEFAULT_SAMPLER, SAMPLERS

    samplers = cli.as_list(opts.get("sampler", DEFAULT_SAMPLER))

    known = sorted(set(group_options("sampler")) | set(SAMPLERS))
    for name in samplers:
        if name not in known:
            raise ReplayError(
                f"sampler={name} is not a known option; choose one of: {', '.join(known)}"
            )
    opts["samplers"] = samplers
    compare_mode = len(samplers) > 1 or len(opts["tables"]) > 1
    if "compare" in opts:
        compare_mode = _as_bool("compare", opts["compare"]) or compare_mode
    opts["compare_mode"] = compare_mode
    opts["seeds"] = (
        _as_int("seeds", opts["seeds"], 1) if "seeds" in opts else (20 if compare_mode else 1)
    )
    opts["seed"] = _as_int("seed", opts["seed"], 0) if "seed" in opts else 0
    opts["budget"] = _as_int("budget", opts["budget"], 1) if "budget" in opts else None
    for key in ("study.patience", "study.n_trials"):
        opts[key] = _as_int(key, opts[key], 1) if key in opts else None
    if "study.timeout_s" in opts:
        try:
            timeout = float(opts["study.timeout_s"])
        except ValueError:
            raise ReplayError(
                f"study.timeout_s={opts['study.timeout_s']} is not a number"
            ) from None
        if timeout <= 0:
            raise ReplayError(f"study.timeout_s must be > 0, got {timeout:g}")
        opts["study.timeout_s"] = timeout
    else:
        opts["study.timeout_s"] = None
    return opts


def _single(opts: dict[str, Any], table: Table) -> int:
    from study.storage import open_storage

    url = opts.get("storage.url") or DEFAULT_STORAGE
    if "://" not in url:
        raise ReplayError(f"storage.url={url} is not a database URL (e.g. sqlite:///file.db)")
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    storage = open_storage(url)
    name = opts["samplers"][0]
    base = opts.get("study.name") or f"replay-{table.path.stem}-{name}"
    target = table.optimum * (1 + WITHIN)
    print(
        f"replay {table.path} ({table.size} rows, {int(np.isnan(table.latency).sum())} failed, "
        f"optimum {table.optimum:.4g} us) with {name}; storage {url}",
        file=sys.stderr,
    )
    for s in range(opts["seed"], opts["seed"] + opts["seeds"]):
        study_name = base if opts["seeds"] == 1 else f"{base}-seed{s}"
        result = run_study(
            table,
            name,
            s,
            storage=storage,
            study_name=study_name,
            budget=opts["budget"],
            max_trials=opts["study.n_trials"],
            patience=opts["study.patience"],
            timeout_s=opts["study.timeout_s"],
            sampler_options=opts["sampler_options"],
        )
        evals = evaluations_to(result.trace, target)
        best = min((v for v in result.trace if not math.isnan(v)), default=math.nan)
        complete = [t for t in result.study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        row = min(complete, key=lambda t: t.value).user_attrs.get("row") if complete else None
        print(
            f"study '{study_name}' seed {s}: {result.trials} trials this run, "
            f"{len(result.trace)} evaluations (distinct rows), best {best:.4g} us"
            + (f" ({table.label(int(row))})" if row is not None else "")
            + f", {best / table.optimum:.3f}x the optimum; "
            + (
                f"within 2% after {evals:g} evaluations"
                if math.isfinite(evals)
                else "never within 2%"
            )
        )
    return 0


def _compare(opts: dict[str, Any], tables: list[Table]) -> int:
    started = time.perf_counter()
    result = compare(
        tables,
        opts["samplers"],
        opts["seeds"],
        base_seed=opts["seed"],
        budget=opts["budget"],
        storage_url=opts.get("storage.url"),
        sampler_options=opts["sampler_options"],
        max_trials=opts["study.n_trials"],
        timeout_s=opts["study.timeout_s"],
    )
    for entry, table in zip(result["tables"], tables, strict=True):
        entry["_latency"] = [float(v) for v in table.latency]
    text = markdown(result)
    print(text)
    if opts.get("out"):
        out = Path(opts["out"])
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
        slim = {
            "seeds": result["seeds"],
            "samplers": result["samplers"],
            "tables": [
                {k: v for k, v in e.items() if k not in ("_latency",)}
                | {
                    "samplers": {
                        n: {k: v for k, v in s.items() if k != "curves"}
                        for n, s in e["samplers"].items()
                    }
                }
                for e in result["tables"]
            ],
        }
        out.with_suffix(".json").write_text(json.dumps(slim, indent=1, default=str) + "\n")
    png = Path(opts.get("plot") or "outputs/replay/compare.png")
    plot(result, png)
    print(f"plot: {png}  ({time.perf_counter() - started:.1f} s)", file=sys.stderr)
    return 0


@cli.command(USAGE, interrupted="interrupted: finished trials are saved")
def main(args: list[str]) -> int:
    from study.search import option_error

    opts = parse(args)
    tables = [load_table(p) for p in opts["tables"]]
    for table in tables:
        ReplaySpace(table)  # ambiguity and duplicate rows are input errors too
    for name in opts["samplers"]:  # a bad sampler.<option> is refused before any output
        reason = option_error(sampler_config(name, opts["sampler_options"]))
        if reason is not None:
            raise ReplayError(reason)
    if opts["compare_mode"]:
        return _compare(opts, tables)
    return _single(opts, tables[0])


if __name__ == "__main__":
    sys.exit(main())
