"""Samplers on real brute-forced landscapes: every table in a folder, our samplers and Kernel
Tuner's strategies, the same seeds and rules.

    .venv/bin/python bench/real_landscapes.py [FOLDER ...] [--seeds 10] [--samplers ga,...]
        [--kt basinhopping,...|none] [--quick] [--jobs N] [--out bench/results/real_landscapes.md]
        [--plots bench/results/real_landscapes]

Folders (default: ../shared/landscapes/ and data/landscapes/, searched recursively) hold our
CSV tables and Kernel Tuner cache files (`.json`, `.json.gz`; a `.json` beside a `.csv` of the
same name is that table's metadata, not a cache). Issue #17's rules:

- 10 seeds or more (0 .. N-1), the same for every sampler; budget min(20% of the rows, 400)
  evaluations, an evaluation being a distinct configuration (failed ones included);
- per landscape and sampler: the median over seeds of the evaluations to within 2% of the
  optimum, a miss counting budget + 1, and the hits out of seeds; the median of best/optimum
  after 1%, 2% and 5% of the rows (where that is within the budget, else "-"); the methodology
  score against random search, (random - sampler) / (random - optimum) with the sampler's mean
  best over seeds and random's exact expected best, at the budget and averaged over every
  k = 1 .. budget (1: the optimum at once, 0: no better than random, negative: worse);
- the sampler's own time per evaluation (its calls from Optuna, timed around them, on one
  thread; for a Kernel Tuner strategy the whole simulated run per evaluation).

`--samplers` takes our samplers' names, each optionally with sampler options
(`ga:explore=0:local=0`), which is how docs/samplers.md compares the default's parts.

Kernel Tuner 1.5's strategies run in its simulation mode where `kernel_tuner` is installed (an
optional extra: `pip install kernel_tuner`): each table is written as a cache file whose
restriction admits exactly its rows (failed ones included, which then fail as they did), the
strategy gets `max_fevals` = the budget and its default options, seeded through numpy's and
Python's global generators; its trace is the distinct configurations in the order it evaluated
them (a strategy that stops before the budget keeps its best).

Prints the table, appends it to --out, writes one PNG per landscape (best-so-far / optimum
against evaluations, median and interquartile band per sampler, random's expectation dotted).
`--quick`: 3 seeds, ga and random, two Kernel Tuner strategies (a smoke run).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import random
import sys
import tempfile
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

# One thread per process for numpy's and torch's linear algebra: --jobs runs one process per
# core, and the sampler's time per evaluation is then the time on one core.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DEFAULT_FOLDERS = (ROOT.parent / "shared" / "landscapes", ROOT / "data" / "landscapes")
OURS = ("ga", "ga_plain", "cmaes", "catcma", "tpe", "random")
KT = (
    "basinhopping",
    "bayes_opt",
    "diff_evo",
    "dual_annealing",
    "firefly_algorithm",
    "genetic_algorithm",
    "greedy_ils",
    "greedy_mls",
    "pso",
    "simulated_annealing",
)
FRACTIONS = (0.01, 0.02, 0.05)
WITHIN = 0.02
MAX_BUDGET = 400


# -- the landscapes -------------------------------------------------------------------------------
def discover(folders: list[Path]) -> list[Path]:
    """Every CSV table and Kernel Tuner cache under the folders, sorted by name."""
    from study.landscape import kerneltuner

    found: list[Path] = []
    for folder in folders:
        if not folder.is_dir():
            continue
        for path in sorted(folder.rglob("*")):
            if not path.is_file():
                continue
            if path.suffix == ".csv":
                found.append(path)
            elif kerneltuner.is_cache_path(path):
                if path.suffix == ".json" and path.with_suffix(".csv").is_file():
                    continue  # a recorded table's metadata
                found.append(path)
    return sorted(found, key=lambda p: p.name)


def budget_of(rows: int) -> int:
    return min(math.ceil(0.2 * rows), MAX_BUDGET)


_TABLES: dict[str, Any] = {}


def _table(path: str) -> tuple[Any, Any]:
    """(table, space), loaded once per process."""
    from study import landscape

    if path not in _TABLES:
        table = landscape.load_table(path)
        _TABLES[path] = (table, landscape.ReplaySpace(table))
    return _TABLES[path]


# -- our samplers ---------------------------------------------------------------------------------
def timed(sampler: Any, clock: list[float]) -> Any:
    """The sampler, with the time spent in its own calls added to clock[0]."""
    from optuna.samplers import BaseSampler

    class Timed(BaseSampler):
        def _call(self, name: str, *args: Any) -> Any:
            started = time.perf_counter()
            try:
                return getattr(sampler, name)(*args)
            finally:
                clock[0] += time.perf_counter() - started

        def infer_relative_search_space(self, study: Any, trial: Any) -> Any:
            return self._call("infer_relative_search_space", study, trial)

        def sample_relative(self, study: Any, trial: Any, search_space: Any) -> Any:
            return self._call("sample_relative", study, trial, search_space)

        def sample_independent(self, study: Any, trial: Any, name: str, dist: Any) -> Any:
            return self._call("sample_independent", study, trial, name, dist)

        def before_trial(self, study: Any, trial: Any) -> None:
            self._call("before_trial", study, trial)

        def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
            self._call("after_trial", study, trial, state, values)

    return Timed()


def parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """`name[:option=value...]` (e.g. `ga:explore=0`) as (name, sampler options)."""
    name, *pairs = spec.split(":")
    options: dict[str, Any] = {}
    for pair in pairs:
        key, _, text = pair.partition("=")
        try:
            options[key] = json.loads(text)  # numbers, true/false, null
        except ValueError:
            options[key] = text
    return name, options


def run_ours(path: str, spec: str, seed: int, budget: int) -> tuple[list[float], float]:
    """(latency per distinct row in evaluation order, the sampler's own seconds)."""
    import optuna

    from study import landscape

    name, options = parse_spec(spec)
    import torch

    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore")
    table, space = _table(path)
    clock = [0.0]
    result = landscape.run_study(
        table,
        name,
        seed,
        budget=budget,
        space=space,
        sampler_options=options,
        wrap=lambda s: timed(s, clock),
    )
    return result.trace, clock[0]


# -- Kernel Tuner's strategies --------------------------------------------------------------------
def kernel_tuner_available() -> bool:
    try:
        import kernel_tuner  # noqa: F401
    except ImportError:
        return False
    return True


def _cache_of(table: Any) -> tuple[dict[str, Any], dict[str, int]]:
    """The table as a Kernel Tuner cache (study/landscape/kerneltuner.py's writer: every row,
    failed ones as RuntimeFailedConfig, an inert cell as "-") and each cache key's row."""
    from study.landscape import kerneltuner

    data = kerneltuner.from_table(table)
    return data, {key: r for r, key in enumerate(data["cache"])}


_KT_CACHES: dict[str, tuple[str, dict[str, Any], dict[str, int]]] = {}
_KT_DIR: list[str] = []  # the folder of the temporary cache files (main sets it; workers inherit)


def run_kt(path: str, strategy: str, seed: int, budget: int) -> tuple[list[float], float]:
    """(latency per distinct row in Kernel Tuner's evaluation order, the run's seconds)."""
    from constraint import FunctionConstraint
    from kernel_tuner import tune_kernel

    warnings.filterwarnings("ignore")
    table, _ = _table(path)
    if path not in _KT_CACHES:
        data, rows = _cache_of(table)
        fd, cache_file = tempfile.mkstemp(suffix=".json", dir=_KT_DIR[0] if _KT_DIR else None)
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh)
        _KT_CACHES[path] = (cache_file, data, rows)
    cache_file, data, rows = _KT_CACHES[path]
    allowed = set(rows)

    def admitted(*values: Any) -> bool:
        return ",".join(str(v) for v in values) in allowed

    random.seed(seed)
    np.random.seed(seed)
    started = time.perf_counter()
    results, _ = tune_kernel(
        "replay",
        "",
        (1,),
        [],
        data["tune_params"],
        restrictions=[FunctionConstraint(admitted)],
        cache=cache_file,
        simulation_mode=True,
        strategy=strategy,
        strategy_options={"max_fevals": budget},
        quiet=True,
        verbose=False,
    )
    seconds = time.perf_counter() - started
    trace: list[float] = []
    seen: set[int] = set()
    for result in results:
        key = ",".join(str(result.get(c)) for c in data["tune_params_keys"])
        row = rows.get(key)
        if row is None or row in seen:
            continue
        seen.add(row)
        trace.append(float(table.latency[row]))
        if len(trace) == budget:
            break
    return trace, seconds


def _task(args: tuple[str, str, str, int, int]) -> tuple[str, str, int, list[float], float]:
    kind, path, name, seed, budget = args
    runner = run_kt if kind == "kt" else run_ours
    trace, seconds = runner(path, name, seed, budget)
    return path, name, seed, trace, seconds


# -- the figures ----------------------------------------------------------------------------------
def curve(trace: list[float], worst: float, budget: int) -> np.ndarray:
    """Best-so-far after 1 .. budget evaluations (failed = worst; a run that stopped early keeps
    its best)."""
    values = np.array([worst if math.isnan(v) else v for v in trace[:budget]] or [worst])
    best = np.minimum.accumulate(values)
    return np.concatenate([best, np.full(budget - len(best), best[-1])])


def random_curve(latency: np.ndarray, budget: int) -> np.ndarray:
    from study.landscape import expected_random_best

    return np.array([expected_random_best(latency, k) for k in range(1, budget + 1)])


def figures(
    traces: list[list[float]], table: Any, budget: int, random_best: np.ndarray
) -> dict[str, Any]:
    optimum, worst, n = table.optimum, table.worst, table.size
    target = optimum * (1 + WITHIN)
    evals = []
    for trace in traces:
        hit = next((i + 1 for i, v in enumerate(trace[:budget]) if v <= target), None)
        evals.append(float(hit) if hit is not None else float(budget + 1))
    curves = np.array([curve(t, worst, budget) for t in traces])
    at = {}
    for f in FRACTIONS:
        k = max(1, math.ceil(f * n))
        at[f] = float(np.median(curves[:, k - 1]) / optimum) if k <= budget else None
    mean = curves.mean(axis=0)
    gap = random_best - optimum
    with np.errstate(invalid="ignore", divide="ignore"):
        per_k = np.where(gap > 0, (random_best - mean) / gap, np.where(mean <= optimum, 1.0, 0.0))
    return {
        "median_evals": float(np.median(evals)),
        "hits": int(sum(e <= budget for e in evals)),
        "evals": evals,
        "best_at": at,
        "score_budget": float(per_k[-1]),
        "score_mean": float(per_k.mean()),
        "curves": curves / optimum,
    }


def _cell(value: float | None, fmt: str = "{:.3f}") -> str:
    return "-" if value is None else fmt.format(value)


def _evals(median: float, budget: int) -> str:
    return f">{budget}" if median > budget else f"{median:g}"


def report(
    results: dict[str, dict[str, Any]], seeds: int, names: list[str], default: str
) -> tuple[str, list[str]]:
    """(markdown, verdict lines)."""
    lines: list[str] = []
    verdicts: list[str] = []
    for path, entry in results.items():
        table, budget = entry["table"], entry["budget"]
        n = table.size
        ks = [max(1, math.ceil(f * n)) for f in FRACTIONS]
        lines += [
            f"### {Path(path).name}",
            "",
            f"{n} rows ({int(np.isnan(table.latency).sum())} failed), optimum "
            f"{table.optimum:.4g} us, {int((table.latency <= table.optimum * 1.02).sum())} "
            f"row(s) within 2%; budget {budget} evaluations; {seeds} seeds; random search needs "
            f"{entry['random_evals']:.1f} evaluations to 2% on average (exact); a miss counts "
            f"{budget + 1}.",
            "",
            "| sampler | evals to 2% (median) | hits | "
            + " | ".join(
                f"best/opt @{k} ({round(100 * f)}%)" for k, f in zip(ks, FRACTIONS, strict=True)
            )
            + f" | score @{budget} | score (mean 1..{budget}) | ms/eval |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for name in names:
            fig = entry["samplers"].get(name)
            if fig is None:
                continue
            label = f"**{name}**" if name == default else name
            lines.append(
                f"| {label} | {_evals(fig['median_evals'], budget)} | {fig['hits']}/{seeds} | "
                + " | ".join(_cell(fig["best_at"][f]) for f in FRACTIONS)
                + f" | {fig['score_budget']:.2f} | {fig['score_mean']:.2f} | "
                f"{fig['ms_per_eval']:.1f} |"
            )
        for name, error in entry.get("errors", {}).items():
            lines.append(f"| {name} | error: {error} | | | | | | | |")
        lines.append("")
        verdicts.append(verdict(Path(path).name, entry, default))
    return "\n".join(lines), verdicts


def verdict(name: str, entry: dict[str, Any], default: str) -> str:
    """Issue #17's done-when for one landscape, in one line."""
    samplers = entry["samplers"]
    if default not in samplers:
        return f"{name}: {default} not run"
    mine = samplers[default]
    parts = []
    if "random" in samplers:
        rnd = samplers["random"]
        faster = mine["median_evals"] < rnd["median_evals"]
        at2, rnd2 = mine["best_at"][0.02], rnd["best_at"][0.02]
        no_worse = at2 is None or rnd2 is None or at2 <= rnd2
        parts.append(
            f"vs random: {'fewer' if faster else 'NOT fewer'} evaluations "
            f"({mine['median_evals']:g} vs {rnd['median_evals']:g}), best at 2% "
            f"{'no worse' if no_worse else 'WORSE'} ({_cell(at2)} vs {_cell(rnd2)})"
        )
    others = {n: f for n, f in samplers.items() if n != default}
    if others:
        best_name = min(others, key=lambda n: others[n]["median_evals"])
        best = others[best_name]["median_evals"]
        ok = mine["median_evals"] <= best
        parts.append(
            f"vs the best other ({best_name}, {best:g}): {'no more' if ok else 'MORE'} "
            f"evaluations ({mine['median_evals']:g})"
        )
    return f"{name}: " + "; ".join(parts)


def plot(path: str, entry: dict[str, Any], names: list[str], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table, budget = entry["table"], entry["budget"]
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    x = np.arange(1, budget + 1)
    cmap = plt.get_cmap("tab20")
    for i, name in enumerate(n for n in names if n in entry["samplers"]):
        rel = entry["samplers"][name]["curves"]
        style = {"lw": 2.2} if name == entry["default"] else {"lw": 1.0}
        ax.plot(x, np.median(rel, axis=0), label=name, color=cmap(i % 20), **style)
        q1, q3 = np.percentile(rel, [25, 75], axis=0)
        ax.fill_between(x, q1, q3, color=cmap(i % 20), alpha=0.12)
    ax.plot(x, entry["random_curve"] / table.optimum, "k:", label="random (expected)")
    ax.axhline(1 + WITHIN, color="grey", lw=0.8, ls="--", label="optimum + 2%")
    ax.set_yscale("log")
    ax.set_xlabel("evaluations (distinct configurations)")
    ax.set_ylabel("best so far / optimum (median, IQR)")
    ax.set_title(f"{Path(path).name}: {table.size} rows, budget {budget}", fontsize=9)
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)


# -- main -----------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="*", type=Path)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--samplers", default=",".join(OURS))
    parser.add_argument("--kt", default=None, help="Kernel Tuner strategies, or none")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/real_landscapes.md")
    parser.add_argument("--plots", type=Path, default=ROOT / "bench/results/real_landscapes")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--json", type=Path, help="also write every run's figures here")
    args = parser.parse_args(argv)
    from study.search import DEFAULT_SAMPLER, SAMPLERS

    if args.quick:
        args.seeds = min(args.seeds, 3)
        args.samplers = f"{DEFAULT_SAMPLER},random"
        args.kt = args.kt or "basinhopping,dual_annealing"
    if args.seeds < 1 or args.jobs < 1:
        parser.error("--seeds and --jobs must be >= 1")
    ours = [s.strip() for s in args.samplers.split(",") if s.strip()]
    for name in ours:
        if parse_spec(name)[0] not in SAMPLERS:
            parser.error(f"unknown sampler {name}; choose from {', '.join(SAMPLERS)}")
    kt: list[str] = []
    if args.kt != "none":
        if kernel_tuner_available():
            kt = [s.strip() for s in (args.kt or ",".join(KT)).split(",") if s.strip()]
        elif args.kt:
            parser.error("--kt needs kernel_tuner (pip install kernel_tuner)")
        else:
            print("kernel_tuner is not installed: its strategies are left out", file=sys.stderr)
    paths = discover(args.folders or list(DEFAULT_FOLDERS))
    if not paths:
        parser.error("no landscapes (.csv, .json, .json.gz) in the folders")

    started = time.perf_counter()
    scratch = tempfile.TemporaryDirectory(prefix="kt-replay-")
    _KT_DIR[:] = [scratch.name]
    results: dict[str, dict[str, Any]] = {}
    tasks: list[tuple[str, str, str, int, int]] = []
    for path in paths:
        table, _ = _table(str(path))
        budget = budget_of(table.size)
        target = table.optimum * (1 + WITHIN)
        good = int((table.latency <= target).sum())
        results[str(path)] = {
            "table": table,
            "budget": budget,
            "random_evals": (table.size + 1) / (good + 1),
            "random_curve": random_curve(table.latency, budget),
            "samplers": {},
            "errors": {},
            "default": DEFAULT_SAMPLER,
        }
        for name in ours:
            tasks += [("ours", str(path), name, s, budget) for s in range(args.seeds)]
        for name in kt:
            tasks += [("kt", str(path), name, s, budget) for s in range(args.seeds)]
    runs: dict[tuple[str, str], list[tuple[int, list[float], float]]] = {}
    errors: dict[tuple[str, str], str] = {}

    def collect(item: tuple[str, str, int, list[float], float]) -> None:
        path, name, seed, trace, seconds = item
        runs.setdefault((path, name), []).append((seed, trace, seconds))
        if len(runs[(path, name)]) == args.seeds:
            print(
                f"  {Path(path).name} {name}: {time.perf_counter() - started:.0f} s",
                file=sys.stderr,
                flush=True,
            )

    if args.jobs == 1:
        for task in tasks:
            try:
                collect(_task(task))
            except Exception as exc:  # a strategy that cannot run a table: said in the table
                errors[(task[1], task[2])] = str(exc).splitlines()[0][:80]
    else:
        with ProcessPoolExecutor(args.jobs) as pool:
            futures = [(t, pool.submit(_task, t)) for t in tasks]
            for task, future in futures:
                try:
                    collect(future.result())
                except Exception as exc:
                    errors[(task[1], task[2])] = str(exc).splitlines()[0][:80]
    for (path, name), message in errors.items():
        results[path]["errors"][name] = message
        runs.pop((path, name), None)
    for (path, name), items in runs.items():
        entry = results[path]
        items.sort()
        fig = figures(
            [t for _, t, _ in items], entry["table"], entry["budget"], entry["random_curve"]
        )
        evaluations = sum(max(1, len(t)) for _, t, _ in items)
        fig["ms_per_eval"] = 1000.0 * sum(s for _, _, s in items) / evaluations
        entry["samplers"][name] = fig
    seconds = time.perf_counter() - started

    names = ours + kt
    text, verdicts = report(results, args.seeds, names, DEFAULT_SAMPLER)
    largest = max(results, key=lambda p: results[p]["table"].size)
    own = results[largest]["samplers"].get(DEFAULT_SAMPLER)
    timing = (
        f"The default's ({DEFAULT_SAMPLER}) own time per evaluation on the largest table "
        f"({Path(largest).name}, {results[largest]['table'].size} rows): "
        f"{own['ms_per_eval']:.1f} ms (goal: at most about 50 ms)."
        if own
        else ""
    )
    head = [
        f"## Real landscapes, {dt.date.today().isoformat()}",
        "",
        f"`python bench/real_landscapes.py{' --quick' if args.quick else ''} --seeds "
        f"{args.seeds}` ({platform.node() or 'host'}, {seconds:.0f} s): samplers "
        f"{', '.join(ours)}; Kernel Tuner strategies {', '.join(kt) or 'none'} (simulation "
        "mode). Bold: the default. Rules and figures: the script's docstring.",
        "",
        *[f"- {v}" for v in verdicts],
        *([f"- {timing}"] if timing else []),
        "",
    ]
    text = "\n".join(head) + "\n" + text + "\n"
    print(text)
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    Path(p).name: {
                        n: {"evals": f["evals"], "ms_per_eval": f["ms_per_eval"]}
                        for n, f in e["samplers"].items()
                    }
                    for p, e in results.items()
                },
                indent=1,
            )
        )
    if not args.no_write:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("a") as fh:  # a results file keeps every run, newest last
            fh.write(("\n" if args.out.exists() and args.out.stat().st_size else "") + text)
        for path, entry in results.items():
            name = Path(path).name.split(".")[0]
            plot(path, entry, names, args.plots / f"{name}.png")
    scratch.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
