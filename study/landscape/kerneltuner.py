"""Kernel Tuner cache files (`.json`, `.json.gz`) as replay tables.

A cache (Kernel Tuner's `cachefile=`, the format of the published brute-forced landscapes, e.g.
the FAIR benchmark hub for auto-tuning) is one JSON object: `tune_params_keys` (the parameter
names, in order), `tune_params` (each one's values) and `cache`, one entry per configuration
that the tuner tried, keyed by its values joined with commas. An entry holds the parameter
values and `time`: the mean time in milliseconds, or an error string (`RuntimeFailedConfig`,
`CompilationFailedConfig`, `InvalidConfig`, ...) for a configuration that failed on the GPU.

Read as a replay table (`read` gives its parts, table.py's load_table builds the Table): one row
per cache entry, one parameter column per `tune_params_keys` entry (its values: the distinct
values the entries hold, sorted numerically when they are all numbers), `latency_us` =
1000 x `time`, and a failed row (no latency, the error string in its
note) where `time` is a string or not a positive finite number. Configurations of the product
of `tune_params` that are not in `cache` were excluded by the tuner's restrictions: they are not
in the space (a proposal of one is `not_in_table`, as in any replay table).

Only what replay needs is read; the loader is vectorised per column, so a cache of 100,000
entries loads in a few seconds, most of it JSON parsing.

Written (`from_table`, `write`; `study.record format=kerneltuner`, bench/real_landscapes.py):
one entry per table row, `time` = the row's value (the table's value column: `value_us`, the
paired value a study minimises, where recorded, else `latency_us`) in milliseconds, a failed or
incorrect row `RuntimeFailedConfig` with our reason in `kernel_study_note`; an inert cell (a
tunable of another variant) is the value "-" (Kernel Tuner has no inert parameters, so it is
one more value of that parameter there, and reads back as one); `tune_params` holds each
parameter's values, and only the rows are in `cache` (the rest of the product is, to Kernel
Tuner, excluded by restrictions). Extra top-level keys (our provenance under `kernel_study`)
are ignored by Kernel Tuner and by this reader.
"""

from __future__ import annotations

import gzip
import json
import math
import zlib
from pathlib import Path
from typing import Any

import numpy as np

SUFFIXES = (".json", ".json.gz")
INERT = "-"  # the written value of a parameter that is inert for a row
FAILED = "RuntimeFailedConfig"  # Kernel Tuner's error string for a row without a latency


def is_cache_path(path: str | Path) -> bool:
    """Whether `path` names a file this reader is for (by its name: `.json` or `.json.gz`)."""
    name = Path(path).name.lower()
    return any(name.endswith(s) for s in SUFFIXES)


def read_json(path: Path) -> Any:
    """The file's JSON (gunzipped when it is gzip, whatever its name says)."""
    with path.open("rb") as fh:
        raw = fh.read()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    return json.loads(raw.decode("utf-8"))


def _sort_key(value: Any) -> tuple[int, Any]:
    if isinstance(value, bool):
        return (1, str(value))
    if isinstance(value, int | float):
        return (0, value)
    return (1, str(value))


class CacheError(ValueError):
    """Why a file is not a usable Kernel Tuner cache, in one line (load_table's ReplayError)."""


def read(
    path: Path,
) -> tuple[list[str], dict[str, list[Any]], np.ndarray, np.ndarray, list[str]]:
    """(parameter names, their sorted values, value indices per row, latency_us per row (nan:
    failed), a note per row) of the cache at `path`; CacheError when it is not one."""
    if not path.is_file():
        raise CacheError(f"table={path}: no such file")
    try:
        data = read_json(path)
    except (OSError, EOFError, UnicodeDecodeError, ValueError, zlib.error) as exc:
        raise CacheError(f"table={path}: cannot read it as JSON ({exc})") from None
    if not isinstance(data, dict) or "cache" not in data or "tune_params_keys" not in data:
        raise CacheError(
            f"table={path} is not a Kernel Tuner cache (no 'tune_params_keys' and 'cache')"
        )
    keys, cache = data["tune_params_keys"], data["cache"]
    if not isinstance(keys, list) or not keys or not all(isinstance(k, str) for k in keys):
        raise CacheError(f"table={path}: 'tune_params_keys' is not a list of parameter names")
    if len(set(keys)) != len(keys):
        raise CacheError(f"table={path}: 'tune_params_keys' repeats a name")
    if not isinstance(cache, dict) or not cache:
        raise CacheError(f"table={path}: 'cache' has no entries")

    rows: list[list[Any]] = []
    latency = np.empty(len(cache), dtype=float)
    notes: list[str] = []
    for r, (key, entry) in enumerate(cache.items()):
        if not isinstance(entry, dict) or "time" not in entry:
            raise CacheError(f"table={path}: cache entry '{key}' has no 'time'")
        parts = str(key).split(",")
        if len(parts) != len(keys):
            raise CacheError(
                f"table={path}: cache key '{key}' has {len(parts)} values, "
                f"tune_params_keys has {len(keys)}"
            )
        # the entry's own typed values where it has them, else the key's text
        rows.append([entry.get(k, parse_scalar(p)) for k, p in zip(keys, parts, strict=True)])
        value = entry["time"]
        if isinstance(value, str):
            latency[r] = math.nan
            notes.append(value)
        elif (
            isinstance(value, int | float)
            and not isinstance(value, bool)
            and math.isfinite(value)
            and value > 0
        ):
            latency[r] = 1000.0 * float(value)
            notes.append("")
        else:
            latency[r] = math.nan
            notes.append(f"time={value!r}")
    if np.isnan(latency).all():
        raise CacheError(f"table={path}: no entry has a time (every configuration failed)")

    values: dict[str, list[Any]] = {}
    index = np.empty((len(rows), len(keys)), dtype=np.int64)
    for j, name in enumerate(keys):
        column = [row[j] for row in rows]
        try:
            distinct = sorted(set(column), key=_sort_key)
        except TypeError:  # unhashable values (lists): compare them as text
            column = [json.dumps(v) for v in column]
            distinct = sorted(set(column))
        position = {v: i for i, v in enumerate(distinct)}
        index[:, j] = [position[v] for v in column]
        values[name] = distinct
    seen: dict[tuple[int, ...], int] = {}
    for r, point in enumerate(map(tuple, index.tolist())):
        if point in seen:
            raise CacheError(
                f"table={path}: cache entries {seen[point] + 1} and {r + 1} are the same "
                "configuration"
            )
        seen[point] = r
    return list(keys), values, index, latency, notes


def parse_scalar(text: str) -> Any:
    """An int, else a float, else the text itself (a cache key's parts; replay's options)."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def from_table(
    table: Any,
    device_name: str = "replay",
    kernel_name: str = "replay",
    problem_size: Any = 1,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A replay table (study/landscape/table.py's Table) as a Kernel Tuner cache object."""
    columns = list(table.columns)
    tune_params = {c: list(table.values[c]) for c in columns}
    for j, c in enumerate(columns):
        if (table.index[:, j] < 0).any():
            tune_params[c].append(INERT)
    cache: dict[str, Any] = {}
    for r in range(table.size):
        point = [
            table.values[c][i] if i >= 0 else INERT
            for c, i in zip(columns, table.index[r].tolist(), strict=True)
        ]
        entry: dict[str, Any] = dict(zip(columns, point, strict=True))
        value = float(table.latency[r])
        if math.isnan(value):
            entry["time"] = FAILED
            note = table.notes[r] if r < len(table.notes) else ""
            if note:
                entry["kernel_study_note"] = note
        else:
            entry["time"] = value / 1000.0
        entry |= {"compile_time": 0.0, "verification_time": 0.0, "benchmark_time": 0.0}
        cache[",".join(str(v) for v in point)] = entry
    data: dict[str, Any] = {
        "device_name": device_name,
        "kernel_name": kernel_name,
        "problem_size": problem_size,
        "tune_params_keys": columns,
        "tune_params": tune_params,
        "objective": "time",
        "cache": cache,
    }
    if extra:
        data["kernel_study"] = extra
    return data


def write(path: Path, data: dict[str, Any]) -> None:
    """Write a cache object (gzip where the name ends .gz), atomically: a reader never sees half
    a file, and an interrupted recording keeps the last complete one."""
    raw = (json.dumps(data, default=str) + "\n").encode("utf-8")
    if path.name.lower().endswith(".gz"):
        raw = gzip.compress(raw, mtime=0)
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(raw)
    partial.replace(path)
