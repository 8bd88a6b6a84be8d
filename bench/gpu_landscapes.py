"""Synthetic GPU-kernel landscapes, written as Kernel Tuner cache files, for tuning samplers on the
class rather than on the six real caches we have.

    .venv/bin/python bench/gpu_landscapes.py DIR [--landscapes 8] [--first-seed 0]
    .venv/bin/python bench/real_landscapes.py DIR --kt none ...

The real landscapes (../shared/landscapes/) are brute-forced tile and block sizes, vector widths
and memory flags of convolution, dedispersion, GEMM and point-in-polygon kernels. Each table
drawn here has their ingredients, with random strengths:

- 2 to 4 ordered dimensions (block sizes in steps of 16 or 32, powers of two, small tile
  counts 1..8), 1 to 3 flags, sometimes a 3-valued categorical (a method, a layout);
- log time: a bowl per ordered dimension around a random centre; irregular per-value effects
  (alignment: a block of 48 is not between 32 and 64), strongest on the stepped dimensions; a
  main effect per flag, and a flag that moves one dimension's best value (shared memory that
  pays only with large tiles); a product interaction between two ordered dimensions;
- restrictions: the product of the block dimensions must lie in [32, 1024] threads (the rest is
  not in the cache, as Kernel Tuner's restrictions leave it out); configurations over a
  "register" budget of tile x block fail (RuntimeFailedConfig), and 2% fail at random;
- 1% noise; 1,500 to 20,000 configurations (seeds outside are skipped, deterministically;
  `--min-rows/--max-rows` move the range: `--min-rows 50000 --max-rows 100000` draws the large
  tables on which bench/real_landscapes.py measures each sampler's own time per evaluation).
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

MIN_ROWS, MAX_ROWS = 1500, 20000


def _ordered_values(rng: np.random.Generator, kind: str) -> list[int]:
    if kind == "block":
        step = int(rng.choice([16, 32]))
        return list(range(step, 257, step))
    if kind == "pow2":
        lo = int(rng.integers(0, 3))
        return [2**i for i in range(lo, lo + int(rng.integers(4, 8)))]
    return list(range(1, int(rng.integers(4, 9)) + 1))  # tile counts


def draw(seed: int) -> dict[str, Any]:
    """One landscape as a Kernel Tuner cache dictionary."""
    rng = np.random.default_rng(seed)
    kinds = ["block"] + list(rng.choice(["block", "pow2", "tile", "tile"], int(rng.integers(1, 4))))
    params: dict[str, list[Any]] = {}
    for i, kind in enumerate(kinds):
        params[f"{kind}_{i}"] = _ordered_values(rng, str(kind))
    for i in range(int(rng.integers(1, 4))):
        params[f"flag_{i}"] = [0, 1]
    if rng.random() < 0.5:
        params["method"] = [0, 1, 2]
    names = list(params)
    ordered = [n for n in names if not n.startswith(("flag", "method"))]
    blocks = [n for n in ordered if n.startswith(("block", "pow2"))]
    tiles = [n for n in ordered if n.startswith("tile")]
    centre = {n: rng.uniform(0, 1) for n in ordered}
    width = {n: rng.uniform(0.3, 1.5) for n in ordered}
    jagged = {
        n: rng.normal(0, 0.12 if n.startswith("block") else 0.04, len(params[n])) for n in ordered
    }
    flag_effect = {n: rng.normal(0, 0.25) for n in names if n.startswith("flag")}
    method_effect = rng.normal(0, 0.3, 3)
    moved = (str(rng.choice(list(flag_effect))), str(rng.choice(ordered)), rng.uniform(-0.5, 0.5))
    pair = (str(rng.choice(ordered)), str(rng.choice(ordered)), rng.normal(0, 0.6))
    budget = rng.uniform(0.5, 1.0)  # of the largest tile x block product
    biggest = max(
        (math.prod(v) for v in itertools.product(*[params[n] for n in tiles + blocks[:1]])),
        default=1,
    )
    cache: dict[str, Any] = {}
    for combo in itertools.product(*[params[n] for n in names]):
        point = dict(zip(names, combo, strict=True))
        threads = math.prod(point[n] for n in blocks)
        if not 32 <= threads <= 1024:
            continue
        rank = {n: params[n].index(point[n]) / (len(params[n]) - 1) for n in ordered}
        shift = moved[2] if point[moved[0]] else 0.0
        log = sum(
            width[n] * (rank[n] - centre[n] - (shift if n == moved[1] else 0.0)) ** 2
            + jagged[n][params[n].index(point[n])]
            for n in ordered
        )
        log += sum(e for n, e in flag_effect.items() if point[n])
        log += method_effect[point["method"]] if "method" in point else 0.0
        log += pair[2] * (rank[pair[0]] - 0.5) * (rank[pair[1]] - 0.5)
        log += rng.normal(0, 0.01)
        registers = math.prod(point[n] for n in tiles + blocks[:1])
        failed = registers > budget * biggest or rng.random() < 0.02
        entry: dict[str, Any] = dict(point)
        entry["time"] = "RuntimeFailedConfig" if failed else float(math.exp(log))
        cache[",".join(str(v) for v in combo)] = entry
    return {
        "device_name": "synthetic",
        "kernel_name": f"synthetic_gpu_{seed}",
        "problem_size": [1],
        "tune_params_keys": names,
        "tune_params": params,
        "objective": "time",
        "cache": cache,
    }


def write(
    folder: Path,
    count: int,
    first_seed: int = 0,
    min_rows: int = MIN_ROWS,
    max_rows: int = MAX_ROWS,
) -> list[Path]:
    """The first `count` seeds from `first_seed` whose table has min_rows..max_rows rows with at
    least one that did not fail."""
    folder.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    seed = first_seed
    while len(paths) < count:
        data = draw(seed)
        ok = any(not isinstance(e["time"], str) for e in data["cache"].values())
        if min_rows <= len(data["cache"]) <= max_rows and ok:
            path = folder / f"gpu_synthetic{seed:03d}.json.gz"
            path.write_bytes(gzip.compress(json.dumps(data).encode()))
            paths.append(path)
        seed += 1
    return paths


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--landscapes", type=int, default=8)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--min-rows", type=int, default=MIN_ROWS)
    parser.add_argument("--max-rows", type=int, default=MAX_ROWS)
    args = parser.parse_args()
    found = write(args.folder, args.landscapes, args.first_seed, args.min_rows, args.max_rows)
    for path in found:
        data = json.loads(gzip.decompress(path.read_bytes()))
        times = [e["time"] for e in data["cache"].values()]
        good = [t for t in times if not isinstance(t, str)]
        best = min(good)
        within = sum(t <= 1.02 * best for t in good)
        print(
            f"{path.name}: {len(times)} rows, {len(times) - len(good)} failed, {within} within 2%"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
