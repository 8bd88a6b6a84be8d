"""Does the verdict survive a noisy machine? The same study, quiet and beside a bursty co-load.

For each problem (default `small_cpu`, where nothing beats SDPA, and `decode_cpu`, where
`grouped` beats it about 1.8x), `--runs` studies on the quiet machine and `--runs` beside a
co-load that this script starts and stops itself: one process per core, each alternating
`--busy` seconds of spinning and `--idle` seconds of sleep, all in phase (every core is busy,
then every core idle). Every
study is `python -m study.run` in a subprocess with its own storage; the table has its verdict
(winner or keep SDPA), the candidate it names (or the best alternative) and that candidate's
intervals (in the study; re-timed in fresh processes). Goal: the same verdict in every run of a
problem.

It also measures the order effect (study/measure/timing.py): default SDPA's time right after
SDPA, after a no-op and after a 1 ms Python spin, without and with the pool wake-up the timer
does before each timed call, quiet and loaded.

    python bench/noise_robustness.py                 # defaults below; prints, appends to
    python bench/noise_robustness.py --runs 1 --trials 4 --problems small_cpu    # a smoke run

The default run is short on purpose (a narrowed space, a grid over it) but measures as a user's
`make run` does (bench=default: up to 200 pairs or 4 s a side per trial). `--bench quick` (10
pairs, 0.5 s) is for smoke runs: its intervals are too wide to decide decode_cpu beside the
co-load, as the 2026-12-02T02:34 table shows. The wall time of each study is in the table.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "noise_robustness.md"
# A space per problem that holds the candidates the verdict turns on, small enough for a grid.
SPACES = {
    "small_cpu": [
        "space.variants=[sdpa,plain,chunked]",
        "+space.params.chunked.chunk=[128]",
        "space.mutations.layout=[bhsd]",
        "space.mutations.threads=[0,1]",
    ],
    "decode_cpu": [
        "space.variants=[sdpa,grouped]",
        "+space.params.grouped.kv_splits=[1,4]",
        "space.mutations.layout=[bhsd]",
        "space.mutations.threads=[0,1]",
    ],
}
CO_LOAD = """
import os, sys, time
busy, idle, phase = (float(a) for a in sys.argv[1:4])
time.sleep(phase)
while True:
    end = time.monotonic() + busy
    while time.monotonic() < end:
        pass
    time.sleep(idle)
"""
ORDER = """
import json, time, numpy as np, torch
import torch.nn.functional as F
from study.measure import timing
from kernels import Problem
p = Problem(1, 8, 8, 512, 512, 64, dtype="float32")
q, k, v = (torch.randn(p.q_shape()) for _ in range(3))
timer = timing.Timer(p, cold_cache=False)
def sdpa(): return F.scaled_dot_product_attention(q, k, v)
def noop(): return None
def spin():
    end = time.perf_counter() + 1e-3
    while time.perf_counter() < end:
        pass
for _ in range(5):
    sdpa()
out = {}
for wake in (False, True):
    for name, before in (("SDPA", sdpa), ("no-op", noop), ("1 ms spin", spin)):
        times = []
        for _ in range(REPS):
            before()
            if wake:
                timer.wake()
            t0 = time.perf_counter_ns(); sdpa(); times.append((time.perf_counter_ns() - t0) / 1e3)
        out[f"{name}|{wake}"] = float(np.median(times))
print(json.dumps(out))
"""


class CoLoad:
    """One busy/idle process per core, started and stopped by this script."""

    def __init__(self, busy: float, idle: float) -> None:
        self.busy, self.idle = busy, idle
        self.procs: list[subprocess.Popen] = []

    def __enter__(self) -> CoLoad:
        cores = os.cpu_count() or 1
        for _ in range(cores):  # in phase: the whole machine is busy, then idle
            args = [str(self.busy), str(self.idle), "0"]
            self.procs.append(subprocess.Popen([sys.executable, "-c", CO_LOAD, *args]))
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in self.procs:
            proc.kill()
        for proc in self.procs:
            proc.wait(timeout=10)


def env() -> dict[str, str]:
    out = dict(os.environ)
    out["PYTHONPATH"] = str(ROOT) + os.pathsep + out.get("PYTHONPATH", "")
    return out


def order_effect(reps: int) -> dict[str, float]:
    code = ORDER.replace("REPS", str(reps))
    done = subprocess.run(
        [sys.executable, "-c", code], env=env(), capture_output=True, text=True, timeout=600
    )
    if done.returncode:
        raise RuntimeError(done.stderr[-2000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def one_study(problem: str, trials: int, bench: str, tmp: Path, tag: str) -> dict:
    cwd = tmp / tag
    cwd.mkdir()
    args = [
        f"problem={problem}",
        *SPACES.get(problem, []),
        "sampler=grid",
        f"study.n_trials={trials}",
        f"bench={bench}",
        "study.retime_top_k=2",
        f"study.name=noise-{tag}",
    ]
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "study.run", *args],
        cwd=cwd,
        env=env(),
        capture_output=True,
        text=True,
        timeout=3600,
    )
    wall = time.monotonic() - started
    if done.returncode:
        return {"error": done.stderr.strip().splitlines()[-1][:200], "wall_s": wall}
    (results,) = cwd.glob("outputs/runs/*/*/results.json")
    data = json.loads(results.read_text())
    return data["verdict"] | {"wall_s": wall, "sentence": data["verdict"]["sentence"]}


def interval(speedup: float | None, ci: list[float] | None) -> str:
    if speedup is None:
        return "-"
    return f"{speedup:.2f}x [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else f"{speedup:.2f}x"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", default="small_cpu,decode_cpu")
    parser.add_argument("--runs", type=int, default=3, help="studies per problem and condition")
    parser.add_argument("--trials", type=int, default=6, help="trials per study (grid)")
    parser.add_argument(
        "--bench",
        default="default",
        help="conf/bench/ settings of every study: default (what `make run` uses) or quick",
    )
    parser.add_argument("--busy", type=float, default=3.0, help="co-load busy phase, s")
    parser.add_argument("--idle", type=float, default=3.0, help="co-load idle phase, s")
    parser.add_argument("--order-reps", type=int, default=40)
    parser.add_argument("--no-order", action="store_true", help="skip the order-effect table")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    started = time.monotonic()

    def emit(*lines: str) -> None:  # printed and appended at once: an interrupted run keeps rows
        print("\n".join(lines), flush=True)
        with args.out.open("a") as fh:
            fh.write("\n".join(lines) + "\n")

    emit(
        f"## {dt.datetime.now().isoformat(timespec='minutes')}: {os.cpu_count()} cores, "
        f"load average at start {os.getloadavg()[0]:.1f}, co-load {args.busy:g} s busy / "
        f"{args.idle:g} s idle per core, {args.trials} trials per study (grid, bench={args.bench})",
        "",
    )
    if not args.no_order:
        emit(
            "### Order effect: default SDPA (small_cpu shape) median us, by the call before it",
            "",
            "| machine | pool wake | after SDPA | after a no-op | after a 1 ms spin |",
            "|---|---|---|---|---|",
        )
        for load in (False, True):
            with CoLoad(args.busy, args.idle) if load else contextlib.nullcontext():
                figures = order_effect(args.order_reps)
            for wake in (False, True):
                names = ("SDPA", "no-op", "1 ms spin")
                cells = [f"{figures[f'{name}|{wake}']:.0f}" for name in names]
                machine = "co-loaded" if load else "quiet"
                emit(f"| {machine} | {'yes' if wake else 'no'} | " + " | ".join(cells) + " |")
        emit("")
    emit(
        "### Verdicts",
        "",
        "| problem | machine | run | verdict | candidate | in the study | re-timed | wall s |",
        "|---|---|---|---|---|---|---|---|",
    )
    summary = []
    with tempfile.TemporaryDirectory(prefix="noise-") as tmp:
        for problem in args.problems.split(","):
            seen = []
            for load in (False, True):
                for run in range(1, args.runs + 1):
                    machine = "co-loaded" if load else "quiet"
                    tag = f"{problem}-{machine}-{run}"
                    with CoLoad(args.busy, args.idle) if load else contextlib.nullcontext():
                        got = one_study(problem, args.trials, args.bench, Path(tmp), tag)
                    if "error" in got:
                        row = f"| {problem} | {machine} | {run} | error: {got['error']} | | | | "
                        row += f"{got['wall_s']:.0f} |"
                        seen.append(("error", None))
                    else:
                        variant = (got.get("candidate") or "-").split("(")[0]
                        seen.append((got["kind"], variant if got["kind"] == "winner" else None))
                        row = (
                            f"| {problem} | {machine} | {run} | "
                            f"{got['kind']} | {got.get('candidate') or '-'} | "
                            f"{interval(got.get('speedup'), got.get('ci'))} | "
                            f"{interval(got.get('retimed_speedup'), got.get('retimed_ci'))} | "
                            f"{got['wall_s']:.0f} |"
                        )
                    emit(row)
            same = len(set(seen)) == 1
            summary.append(
                f"- {problem}: {'the same verdict' if same else 'different verdicts'} in "
                f"{len(seen)} runs: {sorted(set(seen), key=str)}"
            )
    minutes = (time.monotonic() - started) / 60
    emit("", *summary, f"- whole benchmark: {minutes:.1f} min", "")
    print(f"appended to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
