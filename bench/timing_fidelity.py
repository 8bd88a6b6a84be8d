"""Does our timer agree with the standard ones, and with itself?

    python bench/timing_fidelity.py [--device cpu|cuda] [--repeats 10]

For SDPA and the plain same-dtype attention on one problem, the median latency from
study.measure.timing.measure_pair (the tool's own paired timer, candidate side, default bench
settings otherwise) against a standard timer that measures the same thing:

- cold (GPU only): ours with `bench.cache=cold` (L2 flushed before each call, CUDA events around
  it) against `triton.testing.do_bench`, which also flushes L2 before each call and times each
  with events (median);
- hot: ours with `bench.cache=hot` (no flush; events around each call on a GPU, perf_counter on
  the CPU) against `torch.utils.benchmark.Timer.blocked_autorange` (same thread count), which
  times blocks of back-to-back calls with the host clock. On the CPU our timer never flushes, so
  the two modes are one; on a GPU the hot pair still differs in one way, said in the table: ours
  is per call, torch's includes the launch gaps of back-to-back calls.

(Comparing our cold per-call device time with torch's hot back-to-back host time, as this script
once did, measured the cache and the launch overhead, not the timers.) Then the same candidate
timed `--repeats` times in one run (default cache mode): the spread (max - min) / median of those
medians. Goals: agreement within 2% (GPU) / 5% (CPU); spread within 1% (GPU) / 3% (CPU). Prints a
markdown table and appends it, with the date, machine and torch version, to
bench/results/timing_fidelity.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.utils.benchmark as tbench  # noqa: E402

from kernels import Problem, plain_attention  # noqa: E402
from study.measure import gate, timing  # noqa: E402
from study.measure.runner import baseline_call  # noqa: E402

BENCH = {  # conf/bench/default.yaml
    "check_sets": 3,
    "warmup": 3,
    "buffers": 3,
    "min_reps": 10,
    "max_reps": 200,
    "target_spread": 0.03,
    "time_cap_s": 4.0,
    "cache": "auto",
}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def ours(problem: Problem, fn, buffers, cache: str = "auto") -> float:
    def sdpa(q, k, v):
        return baseline_call(problem, q, k, v)

    pair = timing.measure_pair(problem, fn, sdpa, buffers, {**BENCH, "cache": cache})
    return pair.candidate.median_us


def torch_timer(fn, args) -> float:
    timer = tbench.Timer(
        stmt="fn(q, k, v)",
        globals={"fn": fn, "q": args[0], "k": args[1], "v": args[2]},
        num_threads=torch.get_num_threads(),
    )
    return timer.blocked_autorange(min_run_time=2.0).median * 1e6


def do_bench(fn, args) -> float | None:
    try:
        from triton.testing import do_bench as triton_do_bench
    except ImportError:
        return None
    return triton_do_bench(lambda: fn(*args), return_mode="median") * 1e3


def _load() -> str:
    """1-minute load average: other processes on the cores are the main source of noise."""
    try:
        return f"{os.getloadavg()[0]:.1f}"
    except OSError:
        return "n/a"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "timing_fidelity.md"))
    opts = parser.parse_args()
    cuda = opts.device.startswith("cuda")
    problem = Problem(
        batch=1,
        heads_q=8,
        heads_kv=8,
        seq_q=512,
        seq_kv=512,
        head_dim=64,
        dtype="float16" if cuda else "float32",
        causal=False,
        device=opts.device,
    )
    buffers = [gate.make_inputs(problem, 100 + i, "normal") for i in range(BENCH["buffers"])]
    functions = {
        "sdpa": lambda q, k, v: baseline_call(problem, q, k, v),
        "plain": lambda q, k, v: plain_attention(q, k, v, problem.causal, problem.scale),
    }
    load_before = _load()
    goal_agree, goal_spread = (0.02, 0.01) if cuda else (0.05, 0.03)
    rows = []  # (function, mode, ours us, reference name, reference us)
    for name, fn in functions.items():
        if cuda:
            triton_us = do_bench(fn, buffers[0])
            if triton_us is not None:
                cold = ours(problem, fn, buffers, "cold")
                rows.append((name, "cold", cold, "do_bench", triton_us))
        hot = ours(problem, fn, buffers, "hot")
        rows.append((name, "hot", hot, "torch.utils.benchmark", torch_timer(fn, buffers[0])))
    repeated = [ours(problem, functions["plain"], buffers) for _ in range(opts.repeats)]
    spread = (max(repeated) - min(repeated)) / statistics.median(repeated)

    device_name = torch.cuda.get_device_name(problem.device) if cuda else cpu_name()
    lines = [
        f"## {dt.datetime.now().isoformat(timespec='seconds')} on {platform.node()}",
        "",
        f"- device: {opts.device} ({device_name}), {os.cpu_count()} CPU cores, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"load average before/after {load_before} / {_load()}",
        f"- problem: {problem.signature()}; our timer: measure_pair, conf/bench/default.yaml",
        f"- goals: agreement within {goal_agree:.0%}, spread of {opts.repeats} medians "
        f"within {goal_spread:.0%}",
        "- like with like: cold = L2 flushed before each call (ours `bench.cache=cold`, "
        "do_bench); hot = no flush (ours `bench.cache=hot` per call, torch.utils.benchmark "
        "back-to-back)" + ("" if cuda else "; the CPU has no flush, so hot only"),
        "",
        "| function | cache | ours us | reference | reference us | ours/reference - 1 | "
        "agreement goal |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, mode, mine, ref_name, reference in rows:
        gap = mine / reference - 1
        verdict = "met" if abs(gap) <= goal_agree else "MISSED"
        lines.append(
            f"| {name} | {mode} | {mine:.1f} | {ref_name} | {reference:.1f} | {gap:+.1%} | "
            f"{verdict} |"
        )
    lines += [
        "",
        f"Same candidate (plain) timed {opts.repeats} times in one run: medians "
        + ", ".join(f"{x:.1f}" for x in repeated)
        + f" us; spread (max-min)/median = {spread:.1%} "
        + ("(goal met)" if spread <= goal_spread else "(goal MISSED)"),
        "",
    ]
    text = "\n".join(lines)
    print(text)
    out = Path(opts.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    header = "" if out.exists() else "# Timing fidelity (bench/timing_fidelity.py)\n\n"
    with out.open("a") as fh:
        fh.write(header + text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
