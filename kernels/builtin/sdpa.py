"""PyTorch SDPA, one variant per backend, plus the default dispatch (the baseline)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from kernels._problem import Problem
from kernels._registry import register

BACKENDS: dict[str, SDPBackend] = {
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "math": SDPBackend.MATH,
}


def sdpa_call(problem: Problem, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """SDPA on `problem`'s mask and scale, with GQA through `enable_gqa` (no K/V copy)."""
    return F.scaled_dot_product_attention(
        q, k, v, is_causal=problem.causal, scale=problem.scale, enable_gqa=problem.gqa
    )


def probe_backend(problem: Problem, backend: str | None) -> str | None:
    """Run the backend once on a small problem of the same dtype, head dim, mask and grouping.

    SDPA's own dispatch rules (dtype, head dim, GPU generation, cuDNN version, GQA) change between
    releases; asking it is the only reliable way to know whether a backend applies.
    """
    if backend == "cudnn" and not problem.is_cuda:
        return "cuDNN attention runs on CUDA devices only"
    if backend == "efficient" and not problem.is_cuda:
        return "the memory-efficient kernel runs on CUDA devices only"
    group = problem.heads_q // problem.heads_kv
    seq_q, seq_kv = min(problem.seq_q, 64), min(problem.seq_kv, 96)
    if problem.seq_q != problem.seq_kv and seq_q == seq_kv:
        seq_kv += 8
    q = torch.randn(
        1, 2 * group, seq_q, problem.head_dim, dtype=problem.dtype, device=problem.device
    )
    k = torch.randn(1, 2, seq_kv, problem.head_dim, dtype=problem.dtype, device=problem.device)
    v = torch.randn_like(k)
    try:
        if backend is None:
            sdpa_call(problem, q, k, v)
        else:
            with sdpa_kernel([BACKENDS[backend]]):
                sdpa_call(problem, q, k, v)
        if problem.is_cuda:
            torch.cuda.synchronize(problem.device)
    except RuntimeError as exc:
        lines = [ln for ln in str(exc).splitlines() if ln.strip()]
        return f"SDPA {backend or 'default'} cannot run this problem: {lines[0] if lines else exc}"
    return None


def _make(backend: str) -> None:
    def supports(problem: Problem) -> str | None:
        return probe_backend(problem, backend)

    def build(problem: Problem):
        chosen = [BACKENDS[backend]]

        def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            with sdpa_kernel(chosen):
                return sdpa_call(problem, q, k, v)

        return run

    build.__doc__ = f"SDPA restricted to the {backend} backend."
    build.__module__ = __name__
    register(f"sdpa_{backend}", supports=supports, tags=("sdpa",))(build)


for _backend in BACKENDS:
    _make(_backend)


@register("sdpa", supports=lambda problem: probe_backend(problem, None), tags=("sdpa", "baseline"))
def build_default(problem: Problem):
    """SDPA with its default backend choice: the baseline every trial is timed against."""

    def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return sdpa_call(problem, q, k, v)

    return run
