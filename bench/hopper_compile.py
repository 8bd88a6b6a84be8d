"""Every distinct triton_flash configuration of a space, compiled for sm_90 without a GPU, checked.

    .venv/bin/python bench/hopper_compile.py [--problems small,llama3_8b_prefill,long_hd128,decode]
        [--dtypes float16,bfloat16] [--spaces triton,full] [--sample N] [--seed S] [--workers 2]
        [--triton DIR] [--out bench/results/hopper_compile.md] [--keep FILE] [override ...]

For each suite problem (conf/problem/), in each dtype, the configurations are those a study of
each space would search on an sm_90 GPU: the space's choices for triton_flash (its
`space.params` narrowing included; `override`s are Hydra overrides such as
`+space.params.triton_flash.BLOCK_M=[64,128]`, or `problem.head_dim=64`), kept by valid() as
on an H100/H200. Configurations that compile to the same input (same signature, constexprs,
specialisation and options) are compiled once. Every configuration is then held to:

- it compiles (a failure is valid()'s to reject, with the compiler's reason);
- its shared memory fits the sm_90 per-block limit (232,448 bytes);
- fp16/bf16 dots lower to wgmma where the tile allows it (BLOCK_M >= 64: a wgmma is 64 rows);
- tma=True produces bulk tensor copies (cp.async.bulk.tensor);
- every tunable changes the PTX: two configurations that differ in one switch and compile to
  the same PTX (debug line info aside) mean that switch is a label there.

Without --sample it compiles all of them (thousands: about a second each on one core, hours
on 2 cores; `--workers` runs compiles in parallel). `--sample N` takes N configurations per
problem and dtype at random (`--seed`; sample() says how) and every kept configuration one
switch away from each: what the CI test compiles. `--triton DIR` runs with the Triton installed
in DIR (e.g. the GPU image's 3.6: `pip install --no-deps --target DIR triton==3.6.0`).
`--keep FILE` stores each compile's result (PTX digest, shared memory, wgmma, bulk copies, or
the compiler's reason) as it is made, under a name that hashes the kernel source, the launch,
the options, the Triton version and the target, and takes those an earlier run stored: the full
run is hours on 2 cores, and goes on where a killed one stopped, in a later session too
(bench/results/hopper_compile_kept.jsonl is the project's, committed; a kernel change renames
every entry, so stale ones are never read).
Exit status 1 if a check fails, 2 for a mistake in the arguments.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import random
import re
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SUITE = ["small", "llama3_8b_prefill", "long_hd128", "decode"]
DTYPES = ["float16", "bfloat16"]
SPACES = ["triton", "full"]
VARIANT = "triton_flash"


@dataclass
class Case:
    """One problem in one dtype: the configurations a study on sm_90 would search."""

    label: str  # e.g. "small/bfloat16"
    problem: Any  # kernels.Problem
    choices: dict[str, list[Any]]
    configs: list[dict[str, Any]]  # kept by valid(), union over the spaces, first seen first
    rejected: dict[str, int] = field(default_factory=dict)  # valid()'s reason -> count


@dataclass
class Findings:
    """What the checks found; empty lists mean the space is clean."""

    failed: list[tuple[str, dict[str, Any], str]] = field(default_factory=list)
    shared: list[tuple[str, dict[str, Any], int]] = field(default_factory=list)
    no_wgmma: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    no_bulk: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    labels: list[tuple[str, str, dict[str, Any], dict[str, Any]]] = field(default_factory=list)

    def ok(self) -> bool:
        return not (self.failed or self.shared or self.no_wgmma or self.no_bulk or self.labels)


def space_case(problem_name: str, dtype: str, spaces: list[str], overrides: list[str]) -> Case:
    """The triton_flash configurations of `spaces` for one problem in one dtype, on sm_90."""
    import kernels
    from kernels.builtin import _triton_aot as aot
    from study.config import compose_config, problem_from, to_container
    from study.space import build_space

    registry = kernels.variants()
    seen: dict[str, dict[str, Any]] = {}
    rejected: dict[str, int] = {}
    choices: dict[str, list[Any]] = {}
    problem = None
    for space_name in spaces:
        cfg = compose_config(
            [f"problem={problem_name}", f"space={space_name}", f"problem.dtype={dtype}", *overrides]
        )
        problem = problem_from(cfg, "cuda")
        with aot.as_device():
            space = build_space(problem, to_container(cfg.space), registry, _supports(problem))
        if VARIANT not in space.choices:
            continue
        choices = space.choices[VARIANT]
        kept, refused = aot.configurations(problem, choices)
        for params in kept:
            seen.setdefault(_key(params), params)
        counts: dict[str, int] = {}
        for reason, items in refused.items():
            kind = re.sub(r"\b\d{5,}\b", "N", reason)  # one line per kind of reason
            counts[kind] = counts.get(kind, 0) + len(items)
        for kind, count in counts.items():  # the spaces overlap: the largest count
            rejected[kind] = max(rejected.get(kind, 0), count)
    assert problem is not None
    return Case(f"{problem_name}/{dtype}", problem, choices, list(seen.values()), rejected)


def _supports(problem: Any):
    """build_space's question, answered for triton_flash alone (the others are not compiled)."""
    import kernels

    variant = kernels.variants()[VARIANT]
    return lambda names: {n: variant.supports(problem) if n == VARIANT else None for n in names}


def _key(params: dict[str, Any]) -> str:
    return repr(sorted(params.items()))


def neighbours(params: dict[str, Any], choices: dict[str, list[Any]]):
    """(switch, the configuration with that one switch changed) for every other choice."""
    for name, values in choices.items():
        for value in values:
            if value != params[name]:
                yield name, params | {name: value}


def sample(case: Case, n: int, rng: random.Random) -> list[dict[str, Any]]:
    """n base configurations and every kept configuration one switch away from each.

    Each base is drawn at random among the configurations with the most switches that have a
    kept neighbour (a base with a load hint has no tma neighbour: valid() keeps no hint with
    tma), so that the neighbours vary every switch the space offers, whatever the seed: the
    best of 20 random draws (as it was) missed one now and then (kv_cache, once '.ca' is not
    kept at 8 warps of 16x64 tiles), and the check's coverage must not depend on the draw.
    """
    kept = {_key(p): p for p in case.configs}

    def around(base: dict[str, Any]) -> list[dict[str, Any]]:
        return [other for _, other in neighbours(base, case.choices) if _key(other) in kept]

    def varied(base: dict[str, Any]) -> int:
        return len({s for s, o in neighbours(base, case.choices) if _key(o) in kept})

    scores = [varied(p) for p in case.configs]
    best = max(scores)
    most = [p for p, score in zip(case.configs, scores, strict=True) if score == best]
    picked: dict[str, dict[str, Any]] = {}
    for _ in range(min(n, len(case.configs))):
        base = rng.choice(most)
        for params in [base, *around(base)]:
            picked.setdefault(_key(params), params)
    return list(picked.values())


@dataclass(frozen=True)
class Kept:
    """A compile result as `--keep` stores it: what the checks read of a Compiled."""

    digest: str
    shared: int
    wgmma: bool
    bulk_tensor: bool
    seconds: float


def _made(result: Any) -> bool:
    """Compiled now or stored by an earlier run (not a failure's reason)."""
    from kernels.builtin import _triton_aot as aot

    return isinstance(result, aot.Compiled | Kept)


def _job_id(compiler: Any, key: str) -> str:
    """The stored name of a compile: its input (kernel source, launch, options), the Triton
    version and the target, hashed. A change to the kernel or the compiler is a new name."""
    import triton

    text = f"{triton.__version__}|sm_{compiler.target.arch}|{key}"
    return hashlib.sha1(text.encode()).hexdigest()[:20]


def load_kept(path: Path | None) -> dict[str, Kept | str]:
    """What earlier runs compiled (`--keep FILE`, one JSON object a line): id -> Kept | reason.
    A line cut short by a killed run is skipped."""
    if path is None or not path.exists():
        return {}
    out: dict[str, Kept | str] = {}
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
            out[row["id"]] = row["failed"] if "failed" in row else Kept(**row["kept"])
        except (ValueError, KeyError, TypeError):
            continue
    return out


def _kept_line(job_id: str, result: Any) -> str:
    from kernels.builtin import _triton_aot as aot

    if isinstance(result, aot.Compiled):
        kept = Kept(result.digest, result.shared, result.wgmma, result.bulk_tensor, result.seconds)
        return json.dumps({"id": job_id, "kept": asdict(kept)})
    return json.dumps({"id": job_id, "failed": str(result)})


def compile_cases(
    cases: list[tuple[Case, list[dict[str, Any]]]],
    workers: int,
    verbose: bool = False,
    keep: Path | None = None,
) -> tuple[dict[tuple[str, str], Any], dict[str, float]]:
    """Compile each distinct launch once. Returns (case label, params key) -> Compiled | Kept |
    reason, and timing figures.

    With `keep`, results stored there by earlier runs are taken as they are and every new one
    is appended as soon as it is compiled: the full run (hours on 2 cores) goes on where a
    killed one stopped, in this session or a later one."""
    from kernels.builtin import _triton_aot as aot

    compiler = aot.Compiler()
    stored = load_kept(keep)
    unique: dict[str, int] = {}
    ids: list[str] = []
    jobs: list[aot.Job] = []
    where: dict[tuple[str, str], int] = {}
    for case, configs in cases:
        for params in configs:
            key = compiler.key(case.problem, params)
            if key not in unique:
                unique[key] = len(jobs)
                jobs.append((case.problem, params))
                ids.append(_job_id(compiler, key))
            where[(case.label, _key(params))] = unique[key]
    todo = [i for i, job_id in enumerate(ids) if job_id not in stored]
    if verbose and keep is not None:
        print(f"  {len(jobs) - len(todo)}/{len(jobs)} taken from {keep}", file=sys.stderr)
    start = time.perf_counter()
    done = [0]
    sink = None
    if keep is not None:
        keep.parent.mkdir(parents=True, exist_ok=True)
        cut = False
        if keep.exists() and keep.stat().st_size:
            with keep.open("rb") as tail:
                tail.seek(-1, os.SEEK_END)
                cut = tail.read(1) != b"\n"
        sink = keep.open("a")
        if cut:  # a line a killed run left unfinished: the next one starts on its own line
            sink.write("\n")

    def progress(index: int, result: Any) -> None:
        done[0] += 1
        if sink is not None:
            sink.write(_kept_line(ids[todo[index]], result) + "\n")
            sink.flush()
        if verbose and (done[0] % 50 == 0 or done[0] == len(todo)):
            print(f"  {done[0]}/{len(todo)} compiled", file=sys.stderr, flush=True)

    try:
        fresh = aot.compile_many([jobs[i] for i in todo], workers=workers, progress=progress)
    finally:
        if sink is not None:
            sink.close()
    results: list[Any] = [stored.get(job_id) for job_id in ids]
    for i, result in zip(todo, fresh, strict=True):
        results[i] = result
    wall = time.perf_counter() - start
    seconds = [r.seconds for r in results if _made(r)]
    timing = {
        "configs": float(len(where)),
        "compiles": float(len(jobs)),
        "stored": float(len(jobs) - len(todo)),
        "wall_s": wall,
        "median_s": statistics.median(seconds) if seconds else 0.0,
        "max_s": max(seconds) if seconds else 0.0,
    }
    return {k: results[i] for k, i in where.items()}, timing


def check(
    cases: list[tuple[Case, list[dict[str, Any]]]], results: dict[tuple[str, str], Any]
) -> Findings:
    """Hold every compiled configuration to the checks listed in the module docstring."""
    from kernels.builtin import _triton_aot as aot

    found = Findings()
    for case, configs in cases:
        half = case.problem.dtype.itemsize == 2
        for params in configs:
            result = results[(case.label, _key(params))]
            if not _made(result):
                found.failed.append((case.label, params, result))
                continue
            if result.shared > aot.SM90.shared_per_block:
                found.shared.append((case.label, params, result.shared))
            if half and params["BLOCK_M"] >= 64 and not result.wgmma:
                found.no_wgmma.append((case.label, params))
            if params["tma"] and not result.bulk_tensor:
                found.no_bulk.append((case.label, params))
            for switch, other in neighbours(params, case.choices):
                twin = results.get((case.label, _key(other)))
                later = _key(params) < _key(other)  # each pair once
                if later and _made(twin) and twin.digest == result.digest:
                    found.labels.append((case.label, switch, params, other))
    return found


def _short(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in params.items())


def report(
    cases: list[tuple[Case, list[dict[str, Any]]]],
    results: dict[tuple[str, str], Any],
    found: Findings,
    timing: dict[str, float],
    how: str,
) -> str:
    import triton

    lines = [
        f"## triton_flash compiled for sm_90 ({dt.date.today().isoformat()}, Triton "
        f"{triton.__version__}, {platform.machine()}, {os.cpu_count()} CPUs)",
        "",
        f"`bench/hopper_compile.py {how}`",
        "",
        "| problem/dtype | kept | compiled | failed | max shared B | wgmma (BLOCK_M>=64) |"
        " bulk tensor (tma) | label pairs | rejected by valid() |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for case, configs in cases:
        got = [results[(case.label, _key(p))] for p in configs]
        ok = [(p, r) for p, r in zip(configs, got, strict=True) if _made(r)]
        big = [p for p, _ in ok if p["BLOCK_M"] >= 64]
        wg = sum(1 for p, r in ok if p["BLOCK_M"] >= 64 and r.wgmma)
        tma = [r for p, r in ok if p["tma"]]
        labels = sum(1 for f in found.labels if f[0] == case.label)
        refused = "; ".join(f"{n} {r}" for r, n in sorted(case.rejected.items()))
        lines.append(
            f"| {case.label} | {len(case.configs)} | {len(configs)} | {len(configs) - len(ok)} | "
            f"{max((r.shared for _, r in ok), default=0)} | {wg}/{len(big)} | "
            f"{sum(r.bulk_tensor for r in tma)}/{len(tma)} | {labels} | {refused} |"
        )
    lines += [
        "",
        f"{int(timing['configs'])} configurations, {int(timing['compiles'])} distinct compiles "
        + (f"({int(timing['stored'])} stored by earlier runs) " if timing.get("stored") else "")
        + f"in {timing['wall_s']:.0f} s wall; one compile: median {timing['median_s']:.2f} s, "
        f"max {timing['max_s']:.2f} s.",
        "",
    ]
    for title, rows in (
        ("compile failures", [f"{c}: {_short(p)}: {why}" for c, p, why in found.failed]),
        ("over the shared-memory limit", [f"{c}: {_short(p)}: {b} B" for c, p, b in found.shared]),
        ("fp16/bf16 without wgmma", [f"{c}: {_short(p)}" for c, p in found.no_wgmma]),
        ("tma without bulk tensor copies", [f"{c}: {_short(p)}" for c, p in found.no_bulk]),
        (
            "labels (one switch, same PTX)",
            [f"{c}: {s}: {_short(a)} == {s}={b[s]!r}" for c, s, a, b in found.labels],
        ),
    ):
        if rows:
            lines += [f"{title} ({len(rows)}):", ""] + [f"- {r}" for r in rows[:30]]
            lines += ([f"- ... {len(rows) - 30} more"] if len(rows) > 30 else []) + [""]
    lines.append("All checks pass." if found.ok() else "Checks FAILED.")
    return "\n".join(lines) + "\n"


def run(
    problems: list[str],
    dtypes: list[str],
    spaces: list[str],
    overrides: list[str],
    n_sample: int | None,
    seed: int,
    workers: int,
    verbose: bool = False,
    keep: Path | None = None,
) -> tuple[list[tuple[Case, list[dict[str, Any]]]], dict, Findings, dict[str, float]]:
    rng = random.Random(seed)
    cases = []
    for name in problems:
        for dtype in dtypes:
            case = space_case(name, dtype, spaces, overrides)
            chosen = case.configs if n_sample is None else sample(case, n_sample, rng)
            cases.append((case, chosen))
    results, timing = compile_cases(cases, workers, verbose, keep)
    return cases, results, check(cases, results), timing


def plan_table(problems: list[str], dtypes: list[str], spaces: list[str], overrides: list[str]):
    """The configurations each case keeps and why valid() rejects the others (no compile)."""
    import triton

    lines = [
        f"triton_flash on sm_90, Triton {triton.__version__}: configurations of {spaces}",
        "",
        "| problem/dtype | kept | rejected by valid(), by reason |",
        "|---|---|---|",
    ]
    total = 0
    for name in problems:
        for dtype in dtypes:
            case = space_case(name, dtype, spaces, overrides)
            total += len(case.configs)
            refused = "; ".join(f"{n} {r}" for r, n in sorted(case.rejected.items()))
            lines.append(f"| {case.label} | {len(case.configs)} | {refused} |")
    return "\n".join([*lines, "", f"{total} configurations kept in all."])


def _reexec_with(triton_dir: str, argv: list[str]) -> int:
    """Run this script again with the Triton in `triton_dir` ahead of the installed one."""
    path = Path(triton_dir).expanduser().resolve()
    if not (path / "triton" / "__init__.py").is_file():
        print(f"--triton {triton_dir}: no triton package there", file=sys.stderr)
        return 2
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(path), str(ROOT)]))
    env["HOPPER_COMPILE_REEXEC"] = "1"
    args = [a for i, a in enumerate(argv) if a != "--triton" and argv[i - 1 : i] != ["--triton"]]
    args = [a for a in args if not a.startswith("--triton=")]
    return subprocess.call([sys.executable, __file__, *args], env=env)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", default=",".join(SUITE))
    parser.add_argument("--dtypes", default=",".join(DTYPES))
    parser.add_argument("--spaces", default=",".join(SPACES))
    parser.add_argument("--sample", type=int, default=None, help="base configurations per case")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--triton", default=None, help="a directory holding another Triton")
    parser.add_argument("--out", default=None, help="append the table to this markdown file")
    parser.add_argument(
        "--keep",
        type=Path,
        default=None,
        help="store each compile's result in this file and take those stored by earlier runs",
    )
    parser.add_argument(
        "--plan", action="store_true", help="count the configurations, compile nothing"
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. problem.head_dim=64")
    args = parser.parse_args(argv)
    if args.triton and not os.environ.get("HOPPER_COMPILE_REEXEC"):
        return _reexec_with(args.triton, argv)
    try:
        import triton  # noqa: F401
    except ImportError:
        print("triton is not installed: nothing to compile", file=sys.stderr)
        return 2
    from study.config import ConfigError

    split = [s for s in (args.problems, args.dtypes, args.spaces)]
    problems, dtypes, spaces = ([x for x in s.split(",") if x] for s in split)
    if args.plan:
        try:
            print(plan_table(problems, dtypes, spaces, args.overrides))
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        return 0
    try:
        chosen = (problems, dtypes, spaces, args.overrides, args.sample, args.seed)
        cases, results, found, timing = run(*chosen, args.workers, True, args.keep)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # The command as run, less where its table goes ("--out FILE" or "--out=FILE").
    how = " ".join(
        a for i, a in enumerate(argv) if not a.startswith("--out") and argv[i - 1 : i] != ["--out"]
    )
    text = report(cases, results, found, timing, how or "(all)")
    print(text)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("a") as handle:
            handle.write(text + "\n")
    return 0 if found.ok() else 1


if __name__ == "__main__":
    sys.exit(main())
