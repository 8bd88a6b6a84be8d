"""How long does a compiled variant's build take: is one trial's limit enough for it?

    python bench/compile_time.py [--problem llama3_8b_prefill] [--variant compiled_chunked]
        [--chunks 512,256,128,64] [--modes default,max-autotune-no-cudagraphs] [--heads 0]
        [--timeout 1800] [--out bench/results/compile_time.md]

Each row builds the variant as a trial's worker does (`kernels.variants()[name].build`, which
compiles and runs the compiled function once on dummy inputs) in a fresh process with an empty
inductor cache, then calls the built run once more: build seconds minus that call's seconds is the
compile time. `--heads N` scales the problem down to N query heads (the graph is the same: static
shapes, one unrolled step per chunk; fewer heads only shorten the dummy call). The problem's
device is this machine's (the CPU here), so the figure is inductor's C++ path, not Triton's GPU
autotuning: read it as the size of the graph, and extrapolate with care. Prints a markdown table
and appends it, with the date and machine, to `--out`.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

ONE_BUILD = """
import json, sys, time
import torch
import kernels
from kernels import Problem

problem = Problem.from_dict(json.loads(sys.argv[1]))
params = json.loads(sys.argv[2])
variant = kernels.variants()[sys.argv[3]]
started = time.perf_counter()
run = variant.build(problem, **params)
build_s = time.perf_counter() - started
q = torch.randn(problem.q_shape(), dtype=problem.dtype, device=problem.device)
k = torch.randn(problem.kv_shape(), dtype=problem.dtype, device=problem.device)
v = torch.randn_like(k)
started = time.perf_counter()
run(q, k, v)
if problem.is_cuda:
    torch.cuda.synchronize()
call_s = time.perf_counter() - started
print(json.dumps({"build_s": build_s, "call_s": call_s}))
"""


def load_problem(name: str, heads: int, device: str) -> dict:
    from kernels import Problem

    cfg = yaml.safe_load((ROOT / "conf" / "problem" / f"{name}.yaml").read_text())
    problem = Problem(**{k: v for k, v in cfg.items() if k != "name"}, name=name, device=device)
    if heads:
        group = problem.heads_q // problem.heads_kv
        problem = dataclasses.replace(
            problem, heads_q=heads, heads_kv=max(1, heads // group), batch=1
        )
    return problem.to_dict()


def one(problem: dict, variant: str, params: dict, timeout: float) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    with tempfile.TemporaryDirectory(prefix="inductor-") as cache:
        env["TORCHINDUCTOR_CACHE_DIR"] = cache  # nothing compiled before: a trial's first build
        args = [sys.executable, "-c", ONE_BUILD, json.dumps(problem), json.dumps(params), variant]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        try:
            proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"error": f"over {timeout:g} s"}
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode:
        return {"error": (proc.stderr.strip().splitlines() or ["?"])[-1][:120]}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    # CPU seconds of the whole process (and the compiler processes it waited for): on a loaded
    # machine the wall-clock figure is mostly waiting for a core
    result["cpu_s"] = sum(getattr(after, f) - getattr(before, f) for f in ("ru_utime", "ru_stime"))
    return result


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--problem", default="llama3_8b_prefill")
    parser.add_argument("--variant", default="compiled_chunked")
    parser.add_argument("--chunks", default="512,256,128,64")
    parser.add_argument("--modes", default="default,max-autotune-no-cudagraphs")
    parser.add_argument("--heads", type=int, default=0, help="scale down to N query heads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--timeout", type=float, default=1800.0)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "compile_time.md"))
    opts = parser.parse_args()
    problem = load_problem(opts.problem, opts.heads, opts.device)
    rows = []
    for mode in opts.modes.split(","):
        for chunk in (int(c) for c in opts.chunks.split(",")):
            chunks = -(-problem["seq_q"] // chunk)
            result = one(problem, opts.variant, {"chunk": chunk, "mode": mode}, opts.timeout)
            rows.append((mode, chunk, chunks, result))
            print(mode, chunk, chunks, result, file=sys.stderr, flush=True)
    shape = {k: problem[k] for k in ("batch", "heads_q", "heads_kv", "seq_q", "seq_kv")}
    lines = [
        f"## {dt.datetime.now().isoformat(timespec='seconds')} on {platform.node()}",
        "",
        f"- {opts.variant} on {opts.problem} {shape} {problem['dtype']} causal={problem['causal']}"
        f", device {opts.device}; {os.cpu_count()} CPU cores, load average before "
        f"{os.getloadavg()[0]:.1f}; each build in a fresh process with an empty inductor cache",
        "",
        "| mode | chunk | chunks (unrolled steps) | build s | one call s "
        "| compile s (build - call) | CPU s of the process |",
        "|---|---|---|---|---|---|---|",
    ]
    for mode, chunk, chunks, r in rows:
        if "error" in r:
            lines.append(f"| {mode} | {chunk} | {chunks} | {r['error']} | - | - | - |")
            continue
        compile_s = r["build_s"] - r["call_s"]
        lines.append(
            f"| {mode} | {chunk} | {chunks} | {r['build_s']:.1f} | {r['call_s']:.2f} | "
            f"{compile_s:.1f} | {r['cpu_s']:.0f} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(opts.out)
    title = "# Compile time of compiled variants (bench/compile_time.py)\n\n"
    header = "" if out.exists() else title
    with out.open("a") as fh:
        fh.write(header + text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
