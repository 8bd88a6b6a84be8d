"""Every SDPA backend on every suite problem, eager and CUDA-graph, plus the card's ceilings.

Standalone on purpose (torch only, no project import), so that it runs first on a bare GPU
machine: `python bench/gpu_baseline.py [--out FILE.md] [--problems small,decode]`.

Per problem and backend: a correctness check of one (batch, head) slice against a float32
reference, then device time by CUDA events with the L2 flushed before each call and inputs rotated
among three buffers, eager and replayed from a CUDA graph (one graph per buffer); median and IQR,
TFLOP/s by the 4*B*Hq*Sq*Skv*D convention (halved for causal). Which backend the default dispatch
picks is read from the profiler's kernel names. Ceilings: an 8192^3 bf16 matmul and a 1 GiB
device-to-device copy (bytes read + written).

The four problems mirror conf/problem/*.yaml; keep them in step.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import platform
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

PROBLEMS = {
    # name: (batch, heads_q, heads_kv, seq_q, seq_kv, head_dim, dtype, causal)
    "small": (1, 8, 8, 512, 512, 64, torch.float16, False),
    "llama3_8b_prefill": (1, 32, 8, 4096, 4096, 128, torch.bfloat16, True),
    "long_hd128": (4, 32, 32, 8192, 8192, 128, torch.bfloat16, False),
    "decode": (8, 32, 8, 1, 4096, 128, torch.bfloat16, False),
}
BACKENDS = ["default", "flash", "efficient", "cudnn", "math"]
FLUSH_BYTES = 256 * 2**20
MATH_SCORE_LIMIT_BYTES = 8 * 2**30


def backend_enum(name: str):
    from torch.nn.attention import SDPBackend

    return {
        "flash": SDPBackend.FLASH_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
        "cudnn": SDPBackend.CUDNN_ATTENTION,
        "math": SDPBackend.MATH,
    }[name]


def make_call(name: str, causal: bool, gqa: bool) -> Callable:
    from torch.nn.attention import sdpa_kernel

    def plain(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=gqa)

    if name == "default":
        return plain
    chosen = [backend_enum(name)]

    def restricted(q, k, v):
        with sdpa_kernel(chosen):
            return plain(q, k, v)

    return restricted


def reference_slice(q, k, v, causal: bool) -> torch.Tensor:
    """Float32 attention of batch 0, head 0 (kv head 0), computed plainly."""
    q0, k0, v0 = q[0, 0].float(), k[0, 0].float(), v[0, 0].float()
    scores = (q0 @ k0.T) * q.shape[-1] ** -0.5
    if causal:
        mask = torch.ones(q0.shape[0], k0.shape[0], dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v0


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)

    def at(p: float) -> float:
        pos = (len(ordered) - 1) * p
        lo, hi = math.floor(pos), math.ceil(pos)
        return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)

    return at(0.5), at(0.75) - at(0.25)


def time_eager(fn: Callable, buffers: list, flush: torch.Tensor, reps: int) -> list[float]:
    samples = []
    for i in range(reps):
        args = buffers[i % len(buffers)]
        flush.zero_()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn(*args)
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) * 1e3)
    return samples


def time_graph(fn: Callable, buffers: list, flush: torch.Tensor, reps: int) -> list[float]:
    graphs = []
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for args in buffers:  # warm-up on the side stream, as capture requires
            fn(*args)
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    for args in buffers:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn(*args)
        graphs.append(graph)
    torch.cuda.synchronize()
    samples = []
    for i in range(reps):
        graph = graphs[i % len(graphs)]
        flush.zero_()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) * 1e3)
    return samples


def default_pick(fn: Callable, args: tuple) -> str:
    """Name the backend the default dispatch ran, from the CUDA kernels the profiler saw."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn(*args)
        torch.cuda.synchronize()
    names = [e.key.lower() for e in prof.key_averages()]
    joined = " ".join(names)
    if "cudnn" in joined or "fort_native_sdpa" in joined or "sm90_flash" in joined:
        return "cudnn"
    if "flash" in joined:
        return "flash"
    if "fmha" in joined or "efficient_attention" in joined or "attention_kernel" in joined:
        return "efficient"
    if "gemm" in joined or "softmax" in joined:
        return "math"
    return "unknown: " + ", ".join(names[:3])


def ceilings(flush: torch.Tensor) -> dict[str, float]:
    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    med, _ = percentiles(time_eager(lambda x, y: x @ y, [(a, b)], flush, 20))
    matmul_tflops = 2 * n**3 / (med * 1e-6) / 1e12
    src = torch.randn(2**28, device="cuda")  # 1 GiB of float32
    dst = torch.empty_like(src)
    dst.copy_(src)
    med_copy, _ = percentiles(time_eager(lambda s, d: d.copy_(s), [(src, dst)], flush, 20))
    copy_tbs = 2 * src.numel() * 4 / (med_copy * 1e-6) / 1e12
    del a, b, src, dst
    torch.cuda.empty_cache()
    return {"matmul_bf16_tflops": matmul_tflops, "copy_tb_s": copy_tbs}


def run_problem(name: str, reps: int, flush: torch.Tensor) -> list[str]:
    batch, hq, hkv, sq, skv, d, dtype, causal = PROBLEMS[name]
    flops = 4.0 * batch * hq * sq * skv * d / (2 if causal else 1)
    gen = torch.Generator(device="cuda").manual_seed(1234)

    def draw(shape):
        return torch.randn(shape, device="cuda", dtype=dtype, generator=gen)

    buffers = [
        (draw((batch, hq, sq, d)), draw((batch, hkv, skv, d)), draw((batch, hkv, skv, d)))
        for _ in range(3)
    ]
    rows = []
    pick = "?"
    for backend in BACKENDS:
        label = f"| {name} | {backend} |"
        score_bytes = batch * hq * sq * skv * 4
        if backend == "math" and score_bytes > MATH_SCORE_LIMIT_BYTES:
            rows.append(
                f"{label} skipped: materialises {score_bytes / 2**30:.0f} GiB of scores | | | | | |"
            )
            continue
        fn = make_call(backend, causal, hq != hkv)
        try:
            out = fn(*buffers[0])
            torch.cuda.synchronize()
            ref = reference_slice(*buffers[0], causal)
            err = ((out[0, 0].float() - ref).norm() / ref.norm()).item()
            if not err < 2e-2:
                rows.append(f"{label} INCORRECT rel err {err:.2e} | | | | | |")
                continue
            if backend == "default":
                pick = default_pick(fn, buffers[0])
            for _ in range(3):
                for args in buffers:
                    fn(*args)
            eager_med, eager_iqr = percentiles(time_eager(fn, buffers, flush, reps))
            try:
                graph_med, graph_iqr = percentiles(time_graph(fn, buffers, flush, reps))
                graph = f"{graph_med:.1f} ± {graph_iqr:.1f}"
            except RuntimeError as exc:
                graph_med, graph = float("nan"), f"n/a: {str(exc).splitlines()[0][:60]}"
            rows.append(
                f"{label} {err:.1e} | {eager_med:.1f} ± {eager_iqr:.1f} | "
                f"{flops / (eager_med * 1e-6) / 1e12:.1f} | {graph} | "
                f"{flops / (graph_med * 1e-6) / 1e12:.1f} | "
                f"{'default picks ' + pick if backend == 'default' else ''} |"
            )
        except RuntimeError as exc:
            torch.cuda.synchronize()
            rows.append(f"{label} n/a: {str(exc).splitlines()[0][:80]} | | | | | |")
    del buffers
    torch.cuda.empty_cache()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="append the Markdown table to this file")
    parser.add_argument("--problems", default=",".join(PROBLEMS))
    parser.add_argument("--reps", type=int, default=50)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("error: no CUDA device is visible; this benchmark needs a GPU", file=sys.stderr)
        return 2
    unknown = [p for p in args.problems.split(",") if p not in PROBLEMS]
    if unknown:
        print(f"error: unknown problem(s) {unknown}; known: {', '.join(PROBLEMS)}", file=sys.stderr)
        return 2
    flush = torch.empty(FLUSH_BYTES, dtype=torch.uint8, device="cuda")
    props = torch.cuda.get_device_properties(0)
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    lines = [
        f"## SDPA baseline, {dt.date.today().isoformat()}",
        "",
        f"- GPU: {props.name}, {props.multi_processor_count} SMs, "
        f"{props.total_memory / 2**30:.0f} GiB",
        f"- torch {torch.__version__}, CUDA {torch.version.cuda}, "
        f"cuDNN {torch.backends.cudnn.version()}, triton {triton_version}, "
        f"Python {platform.python_version()}",
    ]
    limits = ceilings(flush)
    lines += [
        f"- measured ceilings: bf16 matmul 8192^3 {limits['matmul_bf16_tflops']:.0f} TFLOP/s, "
        f"device copy {limits['copy_tb_s']:.2f} TB/s (read + write)",
        f"- {args.reps} repetitions per cell, L2 flushed before each, 3 rotating input buffers; "
        "latency in microseconds, median ± IQR",
        "",
        "| problem | backend | rel err (b0 h0) | eager us | eager TFLOP/s | graph us "
        "| graph TFLOP/s | note |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in args.problems.split(","):
        lines += run_problem(name, args.reps, flush)
        print("\n".join(lines[-len(BACKENDS) :]), flush=True)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("a") as fh:
            fh.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
