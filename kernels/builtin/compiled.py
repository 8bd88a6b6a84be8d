"""`torch.compile`d plain and query-chunked attention, compiled outside the timed region.

build() compiles (static shapes, `dynamic=False`, `fullgraph=True`: a graph break is an error,
not a silent eager fallback) and calls the compiled function on dummy inputs of the problem's
shape, so the compile cost lands in the trial's `build_s`, never in a timed call. A call with a
stride pattern build() did not see (the bshd layout) recompiles once, in the untimed gate.

One compiled function serves both output protocols: it writes into an `out` tensor it is given.
`run(q, k, v)` allocates that tensor (as any kernel allocates its output); `run(q, k, v, out=buf)`
(the `out=prealloc` mutation) writes into the caller's buffer and allocates nothing.
`mode=reduce-overhead` (CUDA only) is the exception: CUDA-graph trees skip a graph that writes into
an input, so that mode compiles a function that returns its output, and the run copies it out
(a replay overwrites the previous output; handing it out as is would break the output contract).

Repeated builds in one worker do not recompile: compiled functions are kept per (variant, problem,
params), and dynamo's per-code-object cache limit is raised so that the configurations a study
visits do not silently fall back to eager. When many configurations have been compiled the cache
is dropped (torch._dynamo.reset) before a new one is compiled, never in the middle of a trial.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from kernels._memory import whole_scores_shortfall
from kernels._problem import Problem
from kernels._reference import plain_attention
from kernels._registry import register

MODES = ["default", "max-autotune-no-cudagraphs", "reduce-overhead"]
RECOMPILE_LIMIT = 256  # per code object: modes x layouts x chunks x problems in one worker
MAX_KEPT = 48  # compiled configurations kept before the dynamo cache is dropped
MAX_CHUNKS = 64  # the chunk loop is unrolled when traced: more blocks compile too slowly

_KEPT: dict[tuple[Any, ...], Callable[..., Any]] = {}
COMPILES = {"count": 0}  # how many torch.compile calls built a new function (tests read it)


def raise_limits() -> None:
    """Raise dynamo's recompile limits (here and in flex), so that a study's configurations
    compile instead of silently falling back to eager."""
    config = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(config, name) and getattr(config, name) < RECOMPILE_LIMIT:
            setattr(config, name, RECOMPILE_LIMIT)
    for name in ("accumulated_recompile_limit", "accumulated_cache_size_limit"):
        if hasattr(config, name) and getattr(config, name) < 4 * RECOMPILE_LIMIT:
            setattr(config, name, 4 * RECOMPILE_LIMIT)


def reset_cache() -> None:
    """Forget every compiled configuration (dynamo's caches too)."""
    _KEPT.clear()
    torch._dynamo.reset()


def supports(problem: Problem) -> str | None:
    if problem.device == "cpu":
        from torch._inductor import cpp_builder

        try:
            cpp_builder.get_cpp_compiler()
        except Exception as exc:  # no C++ compiler: inductor's CPU backend cannot build
            return f"torch.compile on the CPU needs a C++ compiler: {exc}"
        return None
    if problem.is_cuda:
        try:
            import triton  # noqa: F401
        except ImportError:
            return "torch.compile on CUDA needs triton"
        return None
    return f"torch.compile variants run on cpu or cuda, not {problem.device}"


def _plain_supports(problem: Problem) -> str | None:
    """compiled_plain holds the whole score matrix: it must fit too."""
    return supports(problem) or whole_scores_shortfall(problem)


def _mode_valid(problem: Problem, mode: str) -> str | None:
    if mode == "reduce-overhead" and not problem.is_cuda:
        return "mode=reduce-overhead (CUDA graphs) applies to CUDA only"
    return None


def _make_plain(scale: float, causal: bool) -> Callable[..., None]:
    """plain_attention itself (it traces whole under fullgraph), written into `out`."""

    def plain_into(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor) -> None:
        out.copy_(plain_attention(q, k, v, causal, scale))

    return plain_into


def _make_chunked(scale: float, causal: bool, chunk: int) -> Callable[..., None]:
    def chunked_into(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor) -> None:
        group = q.shape[1] // k.shape[1]
        if group > 1:
            k = k.repeat_interleave(group, dim=1)
            v = v.repeat_interleave(group, dim=1)
        seq_q, seq_kv = q.shape[2], k.shape[2]
        for start in range(0, seq_q, chunk):
            stop = min(start + chunk, seq_q)
            keys = min(stop, seq_kv) if causal else seq_kv
            scores = torch.matmul(q[:, :, start:stop], k[:, :, :keys].transpose(-2, -1)) * scale
            if causal:
                rows = torch.arange(start, stop, device=q.device)[:, None]
                cols = torch.arange(keys, device=q.device)[None, :]
                scores = scores.masked_fill(cols > rows, float("-inf"))
            weights = torch.softmax(scores.float(), dim=-1).to(q.dtype)
            out[:, :, start:stop].copy_(torch.matmul(weights, v[:, :, :keys]))

    return chunked_into


def _compiled(key: tuple[Any, ...], fn: Callable[..., None], problem: Problem, mode: str):
    """The compiled `fn` for `key`, compiled and run once on dummy inputs if new."""
    raise_limits()
    if key in _KEPT:
        return _KEPT[key]
    if len(_KEPT) >= MAX_KEPT:
        reset_cache()
    if mode == "reduce-overhead":
        # CUDA-graph trees skip graphs that write into a non-static input: compile a function
        # that returns its output instead (the runner copies it out, see _runner)
        compiled = torch.compile(_returning(fn), mode=mode, dynamic=False, fullgraph=True)
    else:
        compiled = torch.compile(fn, mode=mode, dynamic=False, fullgraph=True)
    COMPILES["count"] += 1
    q = torch.randn(problem.q_shape(), dtype=problem.dtype, device=problem.device)
    k = torch.randn(problem.kv_shape(), dtype=problem.dtype, device=problem.device)
    v = torch.randn_like(k)
    out = torch.empty_like(q)
    with torch.no_grad():
        if mode == "reduce-overhead":
            for _ in range(3):  # cudagraph trees warm up, then record, then replay
                compiled(q, k, v)
        else:
            compiled(q, k, v, out)
    if problem.is_cuda:
        torch.cuda.synchronize(problem.device)
    _KEPT[key] = compiled
    return compiled


def _returning(fn: Callable[..., None]) -> Callable[..., torch.Tensor]:
    def returning(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
        fn(q, k, v, out)
        return out

    return returning


def _runner(
    compiled: Callable[..., Any], problem: Problem, mode: str
) -> Callable[..., torch.Tensor]:
    if mode == "reduce-overhead":

        def run_graphed(
            q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, out: torch.Tensor | None = None
        ) -> torch.Tensor:
            # a CUDA-graph tree's output is overwritten by its next replay: copy it out
            with torch.no_grad():
                result = compiled(q, k, v)
                if out is None:
                    return result.clone()
                return out.copy_(result)

        return run_graphed

    def run(
        q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        if out is None:
            out = torch.empty(problem.q_shape(), dtype=q.dtype, device=q.device)
        with torch.no_grad():
            compiled(q, k, v, out)
        return out

    return run


def _problem_key(problem: Problem) -> tuple[Any, ...]:
    return (
        problem.q_shape(),
        problem.kv_shape(),
        problem.dtype,
        problem.causal,
        problem.scale,
        problem.device,
    )


@register(
    "compiled_plain",
    params={"mode": list(MODES)},
    supports=_plain_supports,
    valid=_mode_valid,
    tags=("compiled", "out", "compile"),
)
def build_plain(problem: Problem, mode: str):
    """softmax(Q K^T * scale) V through torch.compile (inductor fuses scale, mask and softmax)."""
    key = ("plain", mode, *_problem_key(problem))
    fn = _make_plain(float(problem.scale), bool(problem.causal))
    return _runner(_compiled(key, fn, problem, mode), problem, mode)


def _chunk_valid(problem: Problem, chunk: int, mode: str) -> str | None:
    if chunk >= problem.seq_q:
        return f"chunk {chunk} >= seq_q {problem.seq_q} is compiled_plain"
    if -(-problem.seq_q // chunk) > MAX_CHUNKS:
        return f"{-(-problem.seq_q // chunk)} chunks > {MAX_CHUNKS}: too many to unroll"
    return _mode_valid(problem, mode)


@register(
    "compiled_chunked",
    params={"chunk": [128, 64, 256, 512, 1024], "mode": list(MODES)},
    supports=supports,
    valid=_chunk_valid,
    tags=("compiled", "out", "compile"),
)
def build_chunked(problem: Problem, chunk: int, mode: str):
    """Query-chunked plain attention through torch.compile: score blocks of chunk x seq_kv."""
    key = ("chunked", chunk, mode, *_problem_key(problem))
    fn = _make_chunked(float(problem.scale), bool(problem.causal), int(chunk))
    return _runner(_compiled(key, fn, problem, mode), problem, mode)
