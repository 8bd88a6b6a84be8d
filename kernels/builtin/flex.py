"""FlexAttention (torch.nn.attention.flex_attention), compiled, with its kernel options as tunables.

build() compiles flex_attention (`dynamic=False`, `fullgraph=True`) for the problem and calls it
once on dummy inputs of the problem's shape, so the compile cost is in `build_s`, not in a timed
call. Causal problems get a block mask built in build() (top-left aligned, SDPA's `is_causal`);
GQA goes through `enable_gqa` (no K/V copy).

Tunables (`kernel_options`): BLOCK_M, BLOCK_N, num_warps, num_stages select the Triton template's
tiles on a GPU. The first choice of each, `None`, leaves the option to flex's own heuristics. On
the CPU flex compiles to inductor's C++ template, which takes no tile options: only the all-`None`
configuration is valid there (torch 2.13: compiling it takes about a minute on a 2-core machine,
and eager flex is a slow reference path that warns, so eager is not offered).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from kernels._problem import Problem
from kernels._registry import register

try:
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
except ImportError:  # torch < 2.5
    flex_attention = None
    create_block_mask = None

TILE_OPTIONS = ("BLOCK_M", "BLOCK_N", "num_warps", "num_stages")
SPARSE_BLOCK = 128  # the block mask's block size; flex's tiles must divide it
_KEPT: dict[tuple[Any, ...], Callable[..., Any]] = {}
_MASKS: dict[tuple[Any, ...], Any] = {}


def supports(problem: Problem) -> str | None:
    if flex_attention is None:
        return "this torch has no torch.nn.attention.flex_attention (needs torch >= 2.5)"
    if problem.dtype == torch.float64:
        return "flex_attention's compiled kernels do not take float64"
    if problem.device == "cpu":
        from kernels.builtin.compiled import supports as compile_supports

        return compile_supports(problem)
    if problem.is_cuda:
        major, _ = torch.cuda.get_device_capability(problem.device)
        if major < 8:
            return "flex_attention's Triton template needs sm80 or newer here"
        if problem.head_dim < 16 or problem.head_dim & (problem.head_dim - 1):
            return f"head_dim {problem.head_dim} is not a power of two >= 16"
        return None
    return f"flex_attention runs on cpu or cuda, not {problem.device}"


def valid(problem: Problem, **params: Any) -> str | None:
    chosen = {k: v for k, v in params.items() if v is not None}
    if not problem.is_cuda:
        return f"{', '.join(chosen)} apply to flex's GPU template only" if chosen else None
    for name in ("BLOCK_M", "BLOCK_N"):
        if name in chosen and SPARSE_BLOCK % chosen[name]:
            return f"{name} {chosen[name]} does not divide the block mask's {SPARSE_BLOCK}"
    seq = {"BLOCK_M": problem.seq_q, "BLOCK_N": problem.seq_kv}
    for name, length in seq.items():
        if name in chosen and chosen[name] > max(16, 1 << (length - 1).bit_length()):
            return f"{name} {chosen[name]} exceeds the sequence ({length})"
    if ("BLOCK_M" in chosen) != ("BLOCK_N" in chosen):
        return "set BLOCK_M and BLOCK_N together (flex pairs them)"
    return None


def _compiled_flex() -> Callable[..., Any]:
    key = ("flex",)
    if key not in _KEPT:
        from kernels.builtin.compiled import raise_limits

        raise_limits()
        _KEPT[key] = torch.compile(flex_attention, dynamic=False, fullgraph=True)
    return _KEPT[key]


def _causal_mask(problem: Problem) -> Any:
    key = (problem.seq_q, problem.seq_kv, problem.device)
    if key not in _MASKS:

        def causal(b: Any, h: Any, q_idx: Any, kv_idx: Any) -> Any:
            return q_idx >= kv_idx

        _MASKS[key] = create_block_mask(
            causal, None, None, problem.seq_q, problem.seq_kv, device=problem.device
        )
    return _MASKS[key]


@register(
    "flex",
    params={
        "BLOCK_M": [None, 64, 128, 32],
        "BLOCK_N": [None, 64, 32, 128],
        "num_warps": [None, 4, 8],
        "num_stages": [None, 2, 3, 4],
    },
    supports=supports,
    valid=valid,
    tags=("flex", "compile"),
)
def build(
    problem: Problem,
    BLOCK_M: int | None = None,  # noqa: N803 - the kernel option's own name
    BLOCK_N: int | None = None,  # noqa: N803
    num_warps: int | None = None,
    num_stages: int | None = None,
):
    """torch.compile(flex_attention) with a causal block mask and kernel_options."""
    options = {
        name: value
        for name, value in zip(TILE_OPTIONS, (BLOCK_M, BLOCK_N, num_warps, num_stages), strict=True)
        if value is not None
    }
    block_mask = _causal_mask(problem) if problem.causal else None
    flex = _compiled_flex()
    kwargs: dict[str, Any] = {
        "block_mask": block_mask,
        "scale": float(problem.scale),
        "enable_gqa": problem.gqa,
    }
    if options:
        kwargs["kernel_options"] = options

    def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return flex(q, k, v, **kwargs)

    q = torch.randn(problem.q_shape(), dtype=problem.dtype, device=problem.device)
    k = torch.randn(problem.kv_shape(), dtype=problem.dtype, device=problem.device)
    run(q, k, torch.randn_like(k))  # compile now, outside the timed region
    if problem.is_cuda:
        torch.cuda.synchronize(problem.device)
    return run
