"""The replay space: a recorded table's flat integer space, behind the interface samplers use.

The space is inferred from the table alone, with the flat integer encoding of study/space.py:
each parameter column is one integer dimension, an index into the column's sorted distinct values
(study/landscape/table.py). An empty cell means the parameter is inert for that row (a tunable of
another variant): the row matches whatever index the trial proposes there, as inert dimensions
do live. A proposal that matches no row is not in the space (live: `invalid_params`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.distributions import IntDistribution

from study.landscape.table import ReplayError, Table
from study.space import is_default_point


@dataclass(frozen=True)
class RowCandidate:
    """An effective candidate of a replay space: a table row, or a point that is not in it."""

    row: int | None
    missing: tuple[int, ...] = ()

    def key(self) -> str:
        return f"row:{self.row}" if self.row is not None else f"missing:{list(self.missing)}"


class ReplaySpace:
    """The table's flat integer space, with the interface the samplers use (study/search/)."""

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

    def default_index(self) -> int | None:
        """The row of SDPA at its defaults, as live (study.space.is_default_point); None in a
        table without one (a Kernel Tuner cache)."""
        table = self.table
        for r in range(table.size if table.variant is not None else 0):
            named = {
                c: table.values[c][int(i)]
                for c, i in zip(self.columns, table.index[r], strict=True)
                if i >= 0 and c != "variant"
            }
            if is_default_point(table.variant[r], named):  # type: ignore[index]
                return r
        return None

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
        blob = json.dumps(self.dimension_values(), sort_keys=True, default=str)
        return hashlib.sha1(blob.encode()).hexdigest()[:8]
