"""`python -m study.replay table=PATH.csv sampler=NAME [seeds=N budget=B ...]`: search a table.

A recorded table (DESIGN.md, Replay) is a CSV with one column per parameter, one row per
configuration and `latency_us` (empty: the configuration was incorrect or failed). Columns named
in RESULT_COLUMNS are results, every other column is a parameter. The space is inferred from the
table alone, with the flat integer encoding of study/space.py: each parameter column is one
integer dimension, an index into the column's sorted distinct values (numerically when every
value is a number, else as text: a categorical column like `variant` is an index too). An empty
cell means the parameter is inert for that row (a tunable of another variant): the row matches
whatever index the trial proposes there, as inert dimensions do live. A proposal that matches no
row is not in the space (live: `invalid_params`): the trial ends PRUNED with
`rejected_by=not_in_table` and costs no evaluation.

The objective looks the latency up: a row with a latency ends COMPLETE (value and user attr
`latency_us`, plus `variant` when the table has that column); a row without one ends PRUNED with
`rejected_by=recorded_failure`, as the live objective treats an incorrect candidate.

Cost is counted in evaluations: DISTINCT table rows evaluated (failed rows included: live, they
are measured too). A repeated row is a trial but no evaluation (live, the objective copies the
earlier verdict without measuring). `budget=B` stops a study after B evaluations; every study
also stops when every row was evaluated, after `study.n_trials` trials (default: 20 x rows +
100), after `study.timeout_s` seconds, or after `study.patience` trials without improvement.

One sampler, one table: ordinary studies in the configured storage (`storage.url`, default
sqlite:///outputs/studies.db; `study.name`, `seed`; `seeds=N` runs N studies, seeds seed ..
seed+N-1, named NAME-seedS). Several samplers (`sampler=[cmaes,ga,tpe,random]`), several tables
(`table=[a.csv,b.csv]`) or `compare=true`: the comparison, in memory unless `storage.url` is
given, 20 seeds unless `seeds=` says otherwise, printing per sampler the median and IQR over seeds
of the evaluations needed to come within 2% of the table's optimum, and the
autotuning-methodology score (strategy - random) / (optimum - random) at 10%, 20% and 50% of the
table's rows, where strategy is the mean over seeds of the best latency found within that many
evaluations and random the exact expected best of that many distinct rows drawn uniformly
without replacement. A failed row counts as the table's worst latency in both. Writes a
markdown table (`out=PATH.md`) and a PNG of best-so-far against evaluations (`plot=PATH.png`,
default outputs/replay/compare.png).
"""

from __future__ import annotations

import csv
import json
import math
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from omegaconf import OmegaConf
from optuna.distributions import IntDistribution

from study.config import CONF_DIR, group_options
from study.objective import RESULT_ATTRS
from study.search.callbacks import Patience

USAGE = (
    "usage: python -m study.replay table=PATH.csv sampler=NAME|[a,b,...] [seeds=N] [budget=B] "
    "[seed=N] [compare=true] [study.name=...] [storage.url=...] [study.patience=N] "
    "[study.timeout_s=S] [study.n_trials=N] [sampler.<option>=V] [out=PATH.md] [plot=PATH.png]"
)
# Result columns of a recorded table (what study.record writes): everything else is a parameter.
RESULT_COLUMNS = frozenset(RESULT_ATTRS) | {"status", "rejected_by", "error", "detail"}
WITHIN = 0.02  # "reached the optimum": within 2% of the table's best latency
BUDGET_FRACTIONS = (0.10, 0.20, 0.50)
DEFAULT_STORAGE = "sqlite:///outputs/studies.db"


class ReplayError(Exception):
    """A user's mistake: the message is the one line we print."""


# -- the table ------------------------------------------------------------------------------------
def _parse_value(text: str) -> Any:
    try:
        number = float(text)
    except ValueError:
        return text
    return int(number) if number.is_integer() and "." not in text and "e" not in text else number


@dataclass
class Table:
    path: Path
    columns: list[str]  # parameter columns, in the file's order
    values: dict[str, list[Any]]  # sorted distinct values per column
    index: np.ndarray  # (rows, columns) int: index into values, -1 where inert (empty)
    latency: np.ndarray  # (rows,) float, nan where the configuration failed
    variant: list[str] | None  # the `variant` column's text, when there is one
    notes: list[str] = field(default_factory=list)  # per row: status/rejected_by/error text

    @property
    def size(self) -> int:
        return int(self.latency.shape[0])

    @property
    def optimum(self) -> float:
        return float(np.nanmin(self.latency))

    @property
    def worst(self) -> float:
        return float(np.nanmax(self.latency))

    def label(self, row: int) -> str:
        parts = [
            f"{c}={self.values[c][int(i)]}"
            for c, i in zip(self.columns, self.index[row], strict=True)
            if i >= 0
        ]
        return ", ".join(parts)


def load_table(path: str | Path) -> Table:
    path = Path(path)
    if not path.is_file():
        raise ReplayError(f"table={path}: no such file")
    try:
        with path.open(newline="") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            raw_rows = [r for r in reader if any(cell.strip() for cell in r)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ReplayError(f"table={path}: cannot read it as CSV ({exc})") from None
    if not header:
        raise ReplayError(f"table={path} is empty")
    header = [h.strip() for h in header]
    if "latency_us" not in header:
        raise ReplayError(f"table={path} has no latency_us column (columns: {', '.join(header)})")
    columns = [h for h in header if h and h not in RESULT_COLUMNS]
    if not columns:
        raise ReplayError(f"table={path} has no parameter column besides the results")
    if len(set(header)) != len(header):
        raise ReplayError(f"table={path} repeats a column name")
    if not raw_rows:
        raise ReplayError(f"table={path} has no rows")
    where = {h: i for i, h in enumerate(header)}
    cells: dict[str, list[str]] = {c: [] for c in columns}
    latency: list[float] = []
    notes: list[str] = []
    for number, raw in enumerate(raw_rows, start=2):
        if len(raw) != len(header):
            raise ReplayError(
                f"table={path} line {number}: {len(raw)} cells, the header has {len(header)}"
            )
        for c in columns:
            cells[c].append(raw[where[c]].strip())
        text = raw[where["latency_us"]].strip()
        if text:
            try:
                value = float(text)
            except ValueError:
                value = float("nan")
            if not math.isfinite(value) or value <= 0:
                raise ReplayError(
                    f"table={path} line {number}: latency_us={text!r} is not a positive number"
                )
            latency.append(value)
        else:
            latency.append(float("nan"))
        note = [raw[where[k]].strip() for k in ("status", "rejected_by", "error") if k in where]
        notes.append(": ".join(n for n in note if n))
    values: dict[str, list[Any]] = {}
    index = np.full((len(latency), len(columns)), -1, dtype=np.int64)
    for j, c in enumerate(columns):
        distinct = sorted({t for t in cells[c] if t})
        parsed = [_parse_value(t) for t in distinct]
        if parsed and all(isinstance(p, int | float) for p in parsed):
            order = sorted(range(len(parsed)), key=lambda i: parsed[i])
        else:
            order = list(range(len(parsed)))
        values[c] = [parsed[i] for i in order]
        position = {distinct[i]: k for k, i in enumerate(order)}
        for r, t in enumerate(cells[c]):
            if t:
                index[r, j] = position[t]
        if not values[c]:
            raise ReplayError(f"table={path}: column {c} is empty in every row")
    lat = np.array(latency, dtype=float)
    if np.isnan(lat).all():
        raise ReplayError(f"table={path}: no row has a latency (every configuration failed)")
    variant = cells.get("variant")
    return Table(path, columns, values, index, lat, variant, notes)


# -- the space ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RowCandidate:
    """An effective candidate of a replay space: a table row, or a point that is not in it."""

    row: int | None
    missing: tuple[int, ...] = ()

    def key(self) -> str:
        return f"row:{self.row}" if self.row is not None else f"missing:{list(self.missing)}"


class ReplaySpace:
    """The table's flat integer space, with the interface the samplers use (see samplers.py)."""

    def __init__(self, table: Table) -> None:
        self.table = table
        self.columns = table.columns
        self._dists = {c: IntDistribution(0, len(table.values[c]) - 1) for c in table.columns}
        groups: dict[tuple[bool, ...], dict[tuple[int, ...], int]] = {}
        for r in range(table.size):
            mask = tuple(bool(i >= 0) for i in table.index[r])
            projected = tuple(int(i) for i in table.index[r] if i >= 0)
            group = groups.setdefault(mask, {})
            if projected in group:
                raise ReplayError(
                    f"table={table.path}: rows {group[projected] + 2} and {r + 2} (lines) are the "
                    "same configuration"
                )
            group[projected] = r
        # most specific first: a row that names a value wins over one where it is inert
        self._groups = sorted(groups.items(), key=lambda item: -sum(item[0]))
        for r in range(table.size):
            found = self.decode(self.encode(RowCandidate(r))).row
            if found != r:
                raise ReplayError(
                    f"table={table.path}: line {r + 2} leaves a parameter empty but line "
                    f"{(found or 0) + 2} matches it too: the table is ambiguous"
                )

    def distributions(self) -> dict[str, IntDistribution]:
        return dict(self._dists)

    def dimension_values(self) -> dict[str, list[Any]]:
        return {c: list(v) for c, v in self.table.values.items()}

    def suggest(self, trial: optuna.Trial) -> dict[str, int]:
        return {name: trial.suggest_int(name, d.low, d.high) for name, d in self._dists.items()}

    def lookup(self, encoded: dict[str, int]) -> int | None:
        point = [int(encoded[c]) for c in self.columns]
        for mask, group in self._groups:
            row = group.get(tuple(p for p, m in zip(point, mask, strict=True) if m))
            if row is not None:
                return row
        return None

    def decode(self, encoded: dict[str, int]) -> RowCandidate:
        row = self.lookup(encoded)
        if row is not None:
            return RowCandidate(row)
        return RowCandidate(None, tuple(int(encoded[c]) for c in self.columns))

    def encode(self, candidate: RowCandidate) -> dict[str, int]:
        if candidate.row is None:
            return dict(zip(self.columns, candidate.missing, strict=True))
        return {
            c: max(0, int(i))
            for c, i in zip(self.columns, self.table.index[candidate.row], strict=True)
        }

    def candidates(self) -> list[RowCandidate]:
        return [RowCandidate(r) for r in range(self.table.size)]

    def active_encoding(self, candidate: RowCandidate) -> dict[str, int]:
        """The row's non-empty columns as indices (empty = inert, as live)."""
        if candidate.row is None:
            return dict(zip(self.columns, candidate.missing, strict=True))
        return {
            c: int(i)
            for c, i in zip(self.columns, self.table.index[candidate.row], strict=True)
            if i >= 0
        }

    def invalid_reason(self, candidate: RowCandidate) -> str | None:
        return None if candidate.row is not None else "not in the table"

    def digest(self) -> str:
        import hashlib

        blob = json.dumps(self.dimension_values(), sort_keys=True, default=str)
        return hashlib.sha1(blob.encode()).hexdigest()[:8]


# -- the objective --------------------------------------------------------------------------------
class ReplayObjective:
    """Looks latencies up; keeps the evaluation trace (latency per distinct row, in order)."""

    def __init__(
        self,
        space: ReplaySpace,
        budget: int | None = None,
        study: optuna.Study | None = None,
        stop_at: float | None = None,
        min_evaluations: int = 0,
    ) -> None:
        self.space = space
        self.table = space.table
        self.budget = budget
        self.stop_at = stop_at
        self.min_evaluations = min_evaluations
        self.evaluated: dict[int, int] = {}  # row -> trial number that evaluated it
        self.trace: list[float] = []
        self.started = time.monotonic()
        if study is not None:  # a resumed study: its rows are already evaluated
            for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
                row = t.user_attrs.get("row")
                if t.state.is_finished() and row is not None and row not in self.evaluated:
                    self.evaluated[int(row)] = t.number
                    self.trace.append(float(self.table.latency[int(row)]))

    @property
    def evaluations(self) -> int:
        return len(self.trace)

    def best(self) -> float:
        finite = [v for v in self.trace if not math.isnan(v)]
        return min(finite) if finite else math.inf

    def _should_stop(self) -> bool:
        n = self.evaluations
        if n >= self.table.size or (self.budget is not None and n >= self.budget):
            return True
        return (
            self.stop_at is not None and n >= self.min_evaluations and self.best() <= self.stop_at
        )

    def __call__(self, trial: optuna.Trial) -> float:
        encoded = self.space.suggest(trial)
        candidate = self.space.decode(encoded)
        trial.set_user_attr("spec_key", candidate.key())
        if candidate.row is None:
            trial.set_user_attr("rejected_by", "not_in_table")
            trial.set_user_attr("measured", False)
            raise optuna.TrialPruned("not in the table")
        row = candidate.row
        trial.set_user_attr("row", row)
        if self.table.variant is not None:
            trial.set_user_attr("variant", self.table.variant[row])
        if row in self.evaluated:
            trial.set_user_attr("measured", False)
            trial.set_user_attr("duplicate_of", self.evaluated[row])
        else:
            self.evaluated[row] = trial.number
            self.trace.append(float(self.table.latency[row]))
            trial.set_user_attr("measured", True)
        trial.set_user_attr("evaluations", self.evaluations)
        if self._should_stop():
            trial.study.stop()
        latency = float(self.table.latency[row])
        if math.isnan(latency):
            trial.set_user_attr("rejected_by", "recorded_failure")
            if self.table.notes[row]:
                trial.set_user_attr("detail", self.table.notes[row][:200])
            raise optuna.TrialPruned("recorded failure")
        trial.set_user_attr("latency_us", latency)
        return latency


# -- running studies ------------------------------------------------------------------------------
def sampler_config(name: str, options: dict[str, Any]) -> dict[str, Any]:
    path = CONF_DIR / "sampler" / f"{name}.yaml"
    cfg = OmegaConf.to_container(OmegaConf.load(path)) if path.is_file() else {"name": name}
    assert isinstance(cfg, dict)
    return cfg | options


@dataclass
class RunResult:
    sampler: str
    seed: int
    trace: list[float]
    trials: int
    trials_to_target: int | None
    study: optuna.Study


def run_study(
    table: Table,
    sampler_name: str,
    seed: int,
    storage: Any = None,
    study_name: str | None = None,
    budget: int | None = None,
    max_trials: int | None = None,
    patience: int | None = None,
    timeout_s: float | None = None,
    sampler_options: dict[str, Any] | None = None,
    stop_at: float | None = None,
    min_evaluations: int = 0,
    space: ReplaySpace | None = None,
) -> RunResult:
    """One replay study. Returns the evaluation trace and the trial count."""
    from study.search.samplers import make_sampler

    space = space or ReplaySpace(table)
    sampler = make_sampler(sampler_config(sampler_name, sampler_options or {}), space, seed)
    if storage is None:
        storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(
        storage=storage,
        sampler=sampler,
        study_name=study_name,
        direction="minimize",
        load_if_exists=study_name is not None,
    )
    if study_name is not None:
        study.set_user_attr("replay", {"table": str(table.path), "sampler": sampler_name})
    objective = ReplayObjective(space, budget, study, stop_at, min_evaluations)
    target = table.optimum * (1 + WITHIN)
    reached: list[int] = []

    def watch(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if not reached and objective.best() <= target:
            reached.append(trial.number + 1)

    callbacks: list[Any] = [watch]
    if patience:
        callbacks.append(Patience(patience))
    if objective._should_stop():
        return RunResult(sampler_name, seed, objective.trace, 0, None, study)
    before = len(study.trials)
    study.optimize(
        objective,
        n_trials=max_trials if max_trials is not None else 20 * table.size + 100,
        timeout=timeout_s,
        callbacks=callbacks,
    )
    trials = len(study.trials) - before
    return RunResult(
        sampler_name, seed, objective.trace, trials, reached[0] if reached else None, study
    )


# -- the comparison -------------------------------------------------------------------------------
def best_so_far(trace: list[float], worst: float) -> np.ndarray:
    values = np.array([worst if math.isnan(v) else v for v in trace], dtype=float)
    return np.minimum.accumulate(values) if len(values) else values


def evaluations_to(trace: list[float], target: float) -> float:
    for i, v in enumerate(trace):
        if not math.isnan(v) and v <= target:
            return float(i + 1)
    return math.inf


def expected_random_best(latency: np.ndarray, k: int) -> float:
    """Exact E[min] of k distinct rows drawn uniformly without replacement (failed = worst)."""
    worst = float(np.nanmax(latency))
    values = np.sort(np.where(np.isnan(latency), worst, latency))
    n = len(values)
    k = max(1, min(k, n))
    total = math.comb(n, k)
    expected = 0.0
    for i in range(1, n - k + 2):  # P(the minimum is the i-th smallest) = C(n-i, k-1) / C(n, k)
        expected += float(values[i - 1]) * (math.comb(n - i, k - 1) / total)
    return expected


def strategy_best(traces: list[list[float]], k: int, worst: float) -> float:
    bests = []
    for trace in traces:
        curve = best_so_far(trace, worst)
        bests.append(float(curve[min(k, len(curve)) - 1]) if len(curve) else worst)
    return float(np.mean(bests))


def score(strategy: float, random_best: float, optimum: float) -> float:
    if random_best - optimum <= 0:
        return 1.0 if strategy <= optimum else 0.0
    return (strategy - random_best) / (optimum - random_best)


def _stats(values: list[float]) -> tuple[float, float, float]:
    arr = np.array(values, dtype=float)
    with np.errstate(invalid="ignore"):
        q1, med, q3 = np.percentile(arr, [25, 50, 75], method="linear")
    return float(med), float(q1), float(q3)


def _fmt_count(value: float, size: int) -> str:
    return f">{size}" if not math.isfinite(value) else f"{value:g}"


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
        ks = [max(1, math.ceil(f * n)) for f in BUDGET_FRACTIONS]
        cap = budget if budget is not None else n
        entry: dict[str, Any] = {
            "table": str(table.path),
            "rows": n,
            "failed_rows": int(np.isnan(table.latency).sum()),
            "optimum_us": table.optimum,
            "within_2pct_rows": int((table.latency <= target).sum()),
            "budgets": ks,
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
            med, q1, q3 = _stats(evals)
            tmed, _, _ = _stats(trials)
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
                    f"  {table.path.name} {name}: median {_fmt_count(med, n)} evaluations to 2% "
                    f"({entry['samplers'][name]['seconds']} s)",
                    file=sys.stderr,
                )
        out["tables"].append(entry)
    out["seeds"] = seeds
    out["samplers"] = samplers
    return out


def expected_random_evaluations(latency: np.ndarray, target: float) -> float:
    """E[draws without replacement until a row within the target] = (n + 1) / (good + 1)."""
    good = int((latency <= target).sum())
    return (len(latency) + 1) / (good + 1)


def markdown(result: dict[str, Any]) -> str:
    lines = []
    for entry in result["tables"]:
        n = entry["rows"]
        ks = entry["budgets"]
        lines += [
            f"### {Path(entry['table']).name}",
            "",
            f"{n} rows ({entry['failed_rows']} failed), optimum {entry['optimum_us']:.1f} us, "
            f"{entry['within_2pct_rows']} row(s) within 2% of it; {result['seeds']} seeds; "
            f"random search needs {entry['random_evals_to_2pct']:.1f} evaluations on average "
            "(exact).",
            "",
            "| sampler | evals to 2% (median) | IQR | reached | trials to 2% (median) | "
            + " | ".join(f"score @{k} ({round(100 * k / n)}%)" for k in ks)
            + " |",
            "|---|---|---|---|---|" + "---|" * len(ks),
        ]
        for name, s in entry["samplers"].items():
            q1, q3 = s["iqr_evals"]
            lines.append(
                f"| {name} | {_fmt_count(s['median_evals'], n)} | "
                f"{_fmt_count(q1, n)}-{_fmt_count(q3, n)} | {s['reached']}/{result['seeds']} | "
                f"{_fmt_count(s['median_trials'], n)} | "
                + " | ".join(f"{s['scores'][str(k)]:.2f}" for k in ks)
                + " |"
            )
        lines.append("")
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    entries = result["tables"]
    fig, axes = plt.subplots(1, len(entries), figsize=(6 * len(entries), 4.2), squeeze=False)
    for ax, entry in zip(axes[0], entries, strict=True):
        optimum, n = entry["optimum_us"], entry["rows"]
        for name, s in entry["samplers"].items():
            length = max(len(c) for c in s["curves"])
            padded = np.array(
                [c + [c[-1]] * (length - len(c)) if c else [np.nan] * length for c in s["curves"]]
            )
            rel = padded / optimum
            x = np.arange(1, length + 1)
            ax.plot(x, np.median(rel, axis=0), label=name)
            ax.fill_between(
                x, np.percentile(rel, 25, axis=0), np.percentile(rel, 75, axis=0), alpha=0.15
            )
        ks = np.arange(1, n + 1)
        latency = np.array(entry.get("_latency", []), dtype=float)
        if latency.size:
            ax.plot(
                ks,
                [expected_random_best(latency, int(k)) / optimum for k in ks],
                "k:",
                label="random (expected)",
            )
        ax.axhline(1 + WITHIN, color="grey", lw=0.8, ls="--", label="optimum + 2%")
        ax.set_title(Path(entry["table"]).name, fontsize=9)
        ax.set_xlabel("evaluations (distinct configurations)")
        ax.set_ylabel("best latency so far / optimum (median, IQR)")
        ax.set_yscale("log")
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- the command line -----------------------------------------------------------------------------
def _as_list(value: str) -> list[str]:
    value = value.strip()
    if value.startswith("[") and value.endswith("]"):
        value = value[1:-1]
    return [v.strip().strip("'\"") for v in value.split(",") if v.strip()]


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
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


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
    opts: dict[str, Any] = {"sampler_options": {}}
    for arg in args:
        if "=" not in arg:
            raise ReplayError(f"'{arg}' is not key=value; {USAGE}")
        key, value = arg.split("=", 1)
        key = key.strip().lstrip("+")
        if key.startswith("sampler.") and key != "sampler.name":
            opts["sampler_options"][key.split(".", 1)[1]] = _option_value(value)
            continue
        if key == "sampler.name":
            key = "sampler"
        if key not in KEYS:
            raise ReplayError(f"unknown key '{key}'; valid: {', '.join(KEYS)}, sampler.<option>")
        opts[key] = value
    if not opts.get("table"):
        raise ReplayError(f"table=PATH.csv is required; {USAGE}")
    opts["tables"] = _as_list(opts["table"])
    samplers = _as_list(opts.get("sampler", "cmaes"))
    from study.search.samplers import SAMPLERS

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


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in args):
        print(USAGE)
        return 0
    from study.search.samplers import option_error

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    try:
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
    except ReplayError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # storage errors and the like: still one line
        from study.storage import StorageError

        if isinstance(exc, StorageError):
            print(f"error: {exc}", file=sys.stderr)
            return 2
        raise
    except KeyboardInterrupt:
        print("interrupted: finished trials are saved", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
