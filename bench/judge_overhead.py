"""What the judge's separation costs: trial wall time before and after, on the same candidates.

Before: the code at `--before` (default 2e34a1e, issue17's head this branch was rebased onto:
the last commit with the candidate in the worker's own process, with the paired timing and the
containment that the judge keeps), checked out in a temporary `git worktree`. After: this tree.
Each tree runs in a server process of its own (this file with `--serve`, the tree on its
path) that holds one `Worker` of that tree and evaluates the tasks it is sent, as a study's
objective does:
`Worker.call("evaluate", ...)` on `evaluate_task(...)`. The driver sends every task to both
servers, one after the other, the order alternating, so that the two measurements of a task are
seconds apart: this machine's load moves by a factor of three within minutes (a whole study per
side, minutes apart, measured the drift). The figure is the wall time of each `Worker.call`: the
worker's whole evaluation of a trial (build, gate, timing, checks), everything a trial costs
except Optuna's bookkeeping, which both share; the workers' start-up is reported apart.

The candidates are drawn (seeded) from what `space=cpu` searches on each problem, without the
compiled variants: their build is the same inductor compile in both trees, and its cost depends on
inductor's on-disk cache, which the first tree to compile would warm for the second.

    python bench/judge_overhead.py [--problems small_cpu,decode_cpu] [--trials 12] [--bench default]

Prints a table and appends it to bench/results/judge_overhead.md. Goal: at most 20% more per
trial.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "judge_overhead.md"
LEFT_OUT = ("sdpa_math", "compiled_plain", "compiled_chunked", "flex", "triton_flash")


def serve(device: str) -> None:
    """Server mode: one Worker of the tree on sys.path; a task per stdin line, a reply per line."""
    from study.measure.worker import Worker

    worker = Worker(device, [], Path(tempfile.mkdtemp(prefix="judge-bench-")) / "worker.log")
    started = time.perf_counter()
    reply = worker.call("env", {}, 600)
    print(json.dumps({"startup_s": time.perf_counter() - started, "status": reply["status"]}))
    sys.stdout.flush()
    for line in sys.stdin:
        task = json.loads(line)
        started = time.perf_counter()
        reply = worker.call("evaluate", task, 600)
        keep = ("status", "latency_us", "rejected_by", "error", "reps")
        out = {k: reply.get(k) for k in keep} | {"wall_s": time.perf_counter() - started}
        print(json.dumps(out))
        sys.stdout.flush()
    worker.stop()


def candidates(problem: Any, count: int, seed: int) -> list[dict[str, Any]]:
    """`count` distinct valid candidates of space=cpu on `problem` (compiled variants left out)."""
    import itertools

    import kernels

    pool = []
    for name, variant in sorted(kernels.variants().items()):
        if name in LEFT_OUT or variant.supports(problem):
            continue
        grids = [dict(zip(variant.params, c, strict=True)) for c in itertools.product(
            *variant.params.values()
        )]  # fmt: skip
        for params in grids:
            if variant.valid(problem, params):
                continue
            for layout in ("bhsd", "bshd", "bshd_contiguous"):
                for threads in (0, 1):
                    muts = {"layout": layout, "threads": threads}
                    pool.append({"variant": name, "params": params, "mutations": muts})
    return random.Random(seed).sample(pool, min(count, len(pool)))


def start(tree: Path, device: str) -> tuple[subprocess.Popen, float]:
    env = dict(os.environ, PYTHONPATH=str(tree))
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--serve", device],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=tempfile.mkdtemp(prefix="judge-bench-"),
    )
    assert proc.stdout is not None
    first = json.loads(proc.stdout.readline())
    return proc, first["startup_s"]


def ask(proc: subprocess.Popen, task: dict[str, Any]) -> dict[str, Any]:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(json.dumps(task) + "\n")
    proc.stdin.flush()
    return json.loads(proc.stdout.readline())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", metavar="DEVICE")
    parser.add_argument("--problems", default="small_cpu,decode_cpu")
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--bench", default="default")
    parser.add_argument("--before", default="2e34a1e")
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return 0
    sys.path.insert(0, str(ROOT))
    from omegaconf import OmegaConf

    from kernels import Problem

    before = Path(tempfile.mkdtemp(prefix="judge-before-")) / "tree"
    git = ["git", "-C", str(ROOT), "worktree"]
    subprocess.run([*git, "add", "--detach", str(before), args.before], check=True)
    bench = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "bench" / f"{args.bench}.yaml"))
    rows = []
    try:
        servers = {side: start(tree, "cpu") for side, tree in (("before", before), ("after", ROOT))}
        for problem_name in args.problems.split(","):
            path = ROOT / "conf" / "problem" / f"{problem_name}.yaml"
            conf = OmegaConf.to_container(OmegaConf.load(path))
            problem = Problem(**{k: v for k, v in conf.items() if k != "name"}, name=problem_name)
            walls: dict[str, list[float]] = {"before": [], "after": []}
            for number, spec in enumerate(candidates(problem, args.trials, args.seed)):
                task = {
                    "problem": problem.to_dict(),
                    "candidate": spec,
                    "bench": bench,
                    "seed": args.seed * 1000 + number,
                    "label": f"bench {number}",
                }
                order = ("before", "after") if number % 2 == 0 else ("after", "before")
                got = {side: ask(servers[side][0], task) for side in order}
                for side in order:
                    walls[side].append(got[side]["wall_s"])
                print(
                    f"{problem_name} {number} {spec['variant']} {spec['mutations']}: "
                    + ", ".join(f"{s} {got[s]['wall_s']:.2f} s {got[s]['status']}" for s in order),
                    flush=True,
                )
            b, a = sum(walls["before"]), sum(walls["after"])
            ratios = [x / y for x, y in zip(walls["after"], walls["before"], strict=True)]
            rows.append(
                f"| {problem_name} | {len(ratios)} | {b / len(ratios):.2f} | {a / len(ratios):.2f} "
                f"| {a / b - 1:+.0%} | {statistics.median(ratios) - 1:+.0%} |"
            )
        startup = {side: f"{s:.1f}" for side, (_, s) in servers.items()}
        for proc, _ in servers.values():
            assert proc.stdin is not None
            proc.stdin.close()
            proc.wait(60)
    finally:
        subprocess.run([*git, "remove", "--force", str(before)], capture_output=True)
    load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else []
    table = "\n".join(
        [
            f"## {dt.date.today()}: {args.before} (before) vs this tree (after), "
            f"{os.cpu_count()} CPUs, load {' '.join(load)} at the end",
            "",
            f"bench={args.bench}; {args.trials} candidates per problem drawn (seed {args.seed}) "
            f"from space=cpu without {', '.join(LEFT_OUT)}; each evaluated by both trees' "
            f"workers in turn. Worker start-up: before {startup['before']} s, after "
            f"{startup['after']} s.",
            "",
            "| problem | trials | before s/trial | after s/trial | change (sums) | "
            "change (median of per-trial ratios) |",
            "|---|---|---|---|---|---|",
            *rows,
            "",
        ]
    )
    print(table)
    with RESULTS.open("a") as fh:
        fh.write(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
