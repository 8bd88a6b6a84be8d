"""The recorded-table format, one definition for the writer (study.record) and the reader (replay).

A recorded table (docs/architecture.md) is a CSV with one column per parameter, one row per
configuration, then the result columns RESULT_COLUMNS. The parameter columns are the flat
encoding of study/space.py (`variant`, `<variant>.<param>`, `mut.<mutation>`); an empty cell
means the parameter is inert for that row (a tunable of another variant). `latency_us` is empty
when the configuration was incorrect (`status=rejected`, `rejected_by` names the check) or could
not be built or run (`status=error`).

The value replay minimises is a live study's (study/objective.py): `value_us`, the table's
reference SDPA latency (`reference_baseline_us`: the median of its rows' baselines) divided by
the row's paired speedup, so that a row measured in a slow minute ranks where it would in a
quiet one. A table without a `value_us` column (recorded before it existed) replays on
`latency_us`; `Table.value_column` says which.

The reader sets apart as results every column in RESULT_NAMES: the written RESULT_COLUMNS, plus
the other figures a live trial records (`study.objective.RESULT_ATTRS`) and `detail`, so that a
table assembled by hand from trial attributes does not turn those into parameters. Every other
column is a parameter. A column's values are its sorted distinct cells (numerically when every
cell is a number, else as text: a categorical column like `variant` is an index too).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from study.errors import UserError
from study.landscape import kerneltuner
from study.objective import RESULT_ATTRS

FIGURES = ("latency_us", "latency_iqr_us", "latency_min_us", "baseline_latency_us")  # us
NOTES = ("status", "rejected_by", "error")  # why a row has no latency; joined into Table.notes
VALUE = ("value_us", "reference_baseline_us", "paired_speedup")
# The result columns the writer puts after the parameter columns, in this order.
RESULT_COLUMNS = (*VALUE, *FIGURES, "speedup", *NOTES)
# The columns the reader treats as results (a superset of RESULT_COLUMNS, see the docstring).
RESULT_NAMES = frozenset(RESULT_COLUMNS) | frozenset(RESULT_ATTRS) | {"detail"}


class ReplayError(UserError):
    """A user's mistake: the message is the one line we print."""


# -- writing --------------------------------------------------------------------------------------
def param_columns(space: Any) -> list[str]:
    """The parameter columns of a live space's table: its flat encoding's dimensions."""
    return list(space.distributions())


def row_for(space: Any, candidate: Any, result: dict[str, Any]) -> dict[str, Any]:
    """One candidate's row: its active dimensions, then its result (inert ones stay empty)."""
    row: dict[str, Any] = {"variant": candidate.variant}
    for p, value in candidate.params.items():
        row[f"{candidate.variant}.{p}"] = value
    for m, value in candidate.mutations.items():
        row[f"mut.{m}"] = value
    status = result.get("status")
    row["status"] = {"ok": "ok", "rejected": "rejected"}.get(str(status), "error")
    if status == "ok":
        for key in FIGURES:
            row[key] = f"{float(result[key]):.4f}"
        row["speedup"] = f"{float(result['speedup']):.5f}"
        row["paired_speedup"] = f"{float(result['paired_speedup']):.5f}"
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
    for key in ("latency_us", "baseline_latency_us", "speedup", "paired_speedup"):
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
    rows = [
        row_for(space, candidate, merge_rounds(measured))
        for candidate, measured in zip(candidates, results, strict=True)
        if measured
    ]
    baselines = [float(r["baseline_latency_us"]) for r in rows if r["status"] == "ok"]
    reference = float(np.median(baselines)) if baselines else math.nan
    partial = out.with_suffix(".csv.partial")
    with partial.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, restval="")
        writer.writeheader()
        for row in rows:
            if row["status"] == "ok":
                row["reference_baseline_us"] = f"{reference:.4f}"
                row["value_us"] = f"{reference / float(row['paired_speedup']):.4f}"
            counts[row["status"]] += 1
            writer.writerow(row)
    partial.replace(out)
    return counts


# -- reading --------------------------------------------------------------------------------------
def _parse_value(text: str) -> Any:
    try:
        number = float(text)
    except ValueError:
        return text
    return int(number) if number.is_integer() and "." not in text and "e" not in text else number


@dataclass
class Table:
    """A table as read: parameter indices per row and the latencies (what replay needs)."""

    path: Path
    columns: list[str]  # parameter columns, in the file's order
    values: dict[str, list[Any]]  # sorted distinct values per column
    index: np.ndarray  # (rows, columns) int: index into values, -1 where inert (empty)
    latency: np.ndarray  # (rows,) float: the value (value_column), nan where it failed
    variant: list[str] | None  # the `variant` column's text, when there is one
    notes: list[str] = field(default_factory=list)  # per row: status/rejected_by/error text
    value_column: str = "latency_us"  # `value_us` where the table has it

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
    """Read and check a table, our CSV or a Kernel Tuner cache (`.json`, `.json.gz`:
    study/landscape/kerneltuner.py); every problem with it is a one-line ReplayError."""
    path = Path(path)
    if kerneltuner.is_cache_path(path):
        try:
            columns, values, index, latency, notes = kerneltuner.read(path)
        except kerneltuner.CacheError as exc:
            raise ReplayError(str(exc)) from None
        return Table(path, columns, values, index, latency, None, notes)
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
    columns = [h for h in header if h and h not in RESULT_NAMES]
    if not columns:
        raise ReplayError(f"table={path} has no parameter column besides the results")
    if len(set(header)) != len(header):
        raise ReplayError(f"table={path} repeats a column name")
    if not raw_rows:
        raise ReplayError(f"table={path} has no rows")
    where = {h: i for i, h in enumerate(header)}
    value_column = "value_us" if "value_us" in where else "latency_us"
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
        text = raw[where[value_column]].strip()
        if text:
            try:
                value = float(text)
            except ValueError:
                value = float("nan")
            if not math.isfinite(value) or value <= 0:
                raise ReplayError(
                    f"table={path} line {number}: {value_column}={text!r} is not a positive number"
                )
            latency.append(value)
        else:
            latency.append(float("nan"))
        note = [raw[where[k]].strip() for k in NOTES if k in where]
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
    return Table(path, columns, values, index, lat, variant, notes, value_column)
