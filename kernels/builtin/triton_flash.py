"""A Triton flash-attention forward kernel (FlashAttention-2 style), written for this project.

Each program owns BLOCK_M queries of one (batch, query head) and streams the keys and values of
its kv head through in blocks of BLOCK_N, keeping a running row maximum `m`, a running row sum
`l` and an unnormalised float32 accumulator (the online softmax), so the Sq x Skv score matrix
never reaches memory. Grouped-query attention maps query head h to kv head h // (Hq // Hkv)
inside the kernel: K and V are never copied.

The key loop is split in two: key blocks that every query of the block sees in full run
without any mask, and the rest (the diagonal band of a causal mask, the key tail past seq_kv,
and, with causal_skip=False, the blocks above the diagonal) run with the mask. The switches
below change the generated code; BLOCK_M/BLOCK_N/num_warps/num_stages change the tiling.

On the CPU the kernel runs under TRITON_INTERPRET=1 (slow, for correctness only); the
interpreter accepts and ignores num_warps, num_stages and the load hints.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, NamedTuple

import torch

from kernels._problem import Problem
from kernels._registry import register

try:  # the module must import without Triton: supports() then says why it cannot run
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised in a subprocess by the tests
    triton = None
    tl = None

try:
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # Triton without host tensor descriptors (< 3.3): no TMA path
    TensorDescriptor = None

LOG2E = 1.4426950408889634
DTYPES = (torch.float16, torch.bfloat16, torch.float32)
BLOCK_M_CHOICES = [64, 128, 32, 16]
BLOCK_N_CHOICES = [64, 32, 128, 16]
KNOWN_KV_EVICTION = ["", "evict_last", "evict_first"]  # what build() takes
KNOWN_KV_CACHE = ["", ".cg", ".ca"]


def _triton_version() -> tuple[int, int]:
    if triton is None:
        return (0, 0)
    major, minor = triton.__version__.split(".")[:2]
    return int(major), int("".join(c for c in minor if c.isdigit()) or 0)


# What the sm_90 compile check found (tests/kernels/test_triton_hopper.py keeps it true):
# - Triton 3.6, 3.7 and 3.8 drop every kv_eviction/kv_cache hint from the K/V loads they
#   pipeline into cp.async (num_stages >= 2: all of them): the same PTX with and without.
#   From 3.9 the eviction policy reaches cp.async (an L2::cache_hint policy) and `.ca` gives
#   cp.async.ca; `.cg` stays a label (16-byte cp.async is .cg anyway). Only those are offered.
# - warp_specialize: the pass asserts at num_warps=4 (WSLowerToken and others) and leaves the
#   code unchanged at num_warps=8, on 3.6 to 3.9: not offered; build() keeps the path.
HINTS_REACH_CODE = _triton_version() >= (3, 9)
KV_EVICTION = list(KNOWN_KV_EVICTION) if HINTS_REACH_CODE else [""]
KV_CACHE = ["", ".ca"] if HINTS_REACH_CODE else [""]
WARP_SPECIALIZE_REASON = (
    "warp_specialize: on sm_90 Triton's warp specialisation fails on this kernel at "
    "num_warps=4 (an assertion in its NVGPUWarpSpecialization pass) and leaves the code "
    "unchanged at num_warps=8 (Triton 3.6-3.9)"
)


def _jit(fn: Any) -> Any:
    """triton.jit where Triton is installed; the plain function (never launched) where not."""
    return fn if triton is None else triton.jit(fn)


# ----------------------------------------------------------------------------------------------
# The kernel. triton.jit picks compiled or interpreted (TRITON_INTERPRET=1) when it runs, here at
# import, as it did for Triton's own library functions when triton was imported.
# ----------------------------------------------------------------------------------------------


@_jit
def _bf16_nearest(x):
    """float32 -> bfloat16 rounded to nearest even, for the interpreter only.

    The interpreter's float32 -> bfloat16 cast drops the low 16 bits (rounds toward zero,
    whatever fp_downcast_rounding says); the GPU rounds to nearest. Rounding the bits by hand
    first makes the drop exact, so the interpreted kernel rounds as the compiled one does.
    """
    bits = x.to(tl.uint32, bitcast=True)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return bits.to(tl.float32, bitcast=True).to(tl.bfloat16)


@_jit
def _attend_block(
    acc,
    l_i,
    m_i,
    q,
    k_src,
    v_src,
    off_b,
    off_kvh,
    start_n,
    offs_m,
    seq_kv,
    stride_kn,
    stride_kd,
    stride_vn,
    stride_vd,
    qk_scale,
    BLOCK_N: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    MASKED: tl.constexpr,
    CAUSAL: tl.constexpr,
    USE_EXP2: tl.constexpr,
    USE_TMA: tl.constexpr,
    KV_EVICT: tl.constexpr,
    KV_CACHE: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BF16_DOT_IN_FP32: tl.constexpr,
):
    """Fold one block of BLOCK_N keys into the running (acc, l, m) of BLOCK_M queries."""
    cols = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    if USE_TMA:
        # Rows past seq_kv come back as zeros; the score mask below removes them.
        k = tl.reshape(k_src.load([off_b, off_kvh, start_n, 0]), (BLOCK_N, HEAD_DIM))
        v = tl.reshape(v_src.load([off_b, off_kvh, start_n, 0]), (BLOCK_N, HEAD_DIM))
    else:
        k_ptrs = k_src + cols[:, None] * stride_kn + offs_d[None, :] * stride_kd
        v_ptrs = v_src + cols[:, None] * stride_vn + offs_d[None, :] * stride_vd
        if MASKED:
            in_range = cols[:, None] < seq_kv
            k = tl.load(
                k_ptrs, mask=in_range, other=0.0, cache_modifier=KV_CACHE, eviction_policy=KV_EVICT
            )
            v = tl.load(
                v_ptrs, mask=in_range, other=0.0, cache_modifier=KV_CACHE, eviction_policy=KV_EVICT
            )
        else:
            k = tl.load(k_ptrs, cache_modifier=KV_CACHE, eviction_policy=KV_EVICT)
            v = tl.load(v_ptrs, cache_modifier=KV_CACHE, eviction_policy=KV_EVICT)

    if BF16_DOT_IN_FP32:
        # The interpreter multiplies bfloat16 as raw integers; the same products, exactly, in fp32.
        q = q.to(tl.float32)
        k = k.to(tl.float32)
    # Scores in float32; with exp2 the scale already carries log2(e), so exp2(s) = exp(s / log2e).
    s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
    if MASKED:
        visible = cols[None, :] < seq_kv
        if CAUSAL:
            visible = visible & (cols[None, :] <= offs_m[:, None])  # top-left: key j <= query i
        s = tl.where(visible, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    if MASKED:  # noqa: SIM108 - a plain constexpr branch reads clearer in a kernel
        # A row that has seen no visible key yet keeps m = -inf; subtracting 0 instead keeps
        # exp() at 0 rather than NaN (-inf - -inf).
        m_new_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    else:
        m_new_safe = m_new
    if USE_EXP2:
        p = tl.math.exp2(s - m_new_safe[:, None])
        alpha = tl.math.exp2(m_i - m_new_safe)
    else:
        p = tl.exp(s - m_new_safe[:, None])
        alpha = tl.exp(m_i - m_new_safe)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None]
    if BF16_DOT_IN_FP32:
        acc = tl.dot(_bf16_nearest(p).to(tl.float32), v.to(tl.float32), acc, input_precision="ieee")
    else:
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PRECISION)
    return acc, l_i, m_new


@_jit
def _attend_range(
    acc,
    l_i,
    m_i,
    q,
    k_src,
    v_src,
    off_b,
    off_kvh,
    lo,
    hi,
    offs_m,
    seq_kv,
    stride_kn,
    stride_kd,
    stride_vn,
    stride_vd,
    qk_scale,
    BLOCK_N: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    MASKED: tl.constexpr,
    CAUSAL: tl.constexpr,
    USE_EXP2: tl.constexpr,
    USE_TMA: tl.constexpr,
    WARP_SPECIALIZE: tl.constexpr,
    KV_EVICT: tl.constexpr,
    KV_CACHE: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BF16_DOT_IN_FP32: tl.constexpr,
):
    """Fold the key blocks starting at lo, lo + BLOCK_N, ... below hi.

    Two loops rather than one with a flag: `warp_specialize=` only exists in newer Triton, and a
    constexpr branch keeps older versions from ever seeing it.
    """
    if WARP_SPECIALIZE:
        for start_n in tl.range(lo, hi, BLOCK_N, warp_specialize=True):
            start_n = tl.multiple_of(start_n, BLOCK_N)
            acc, l_i, m_i = _attend_block(
                acc, l_i, m_i, q, k_src, v_src, off_b, off_kvh, start_n, offs_m, seq_kv,
                stride_kn, stride_kd, stride_vn, stride_vd, qk_scale,
                BLOCK_N, HEAD_DIM, MASKED, CAUSAL, USE_EXP2, USE_TMA, KV_EVICT, KV_CACHE,
                DOT_PRECISION, BF16_DOT_IN_FP32,
            )  # fmt: skip
    else:
        for start_n in range(lo, hi, BLOCK_N):
            start_n = tl.multiple_of(start_n, BLOCK_N)
            acc, l_i, m_i = _attend_block(
                acc, l_i, m_i, q, k_src, v_src, off_b, off_kvh, start_n, offs_m, seq_kv,
                stride_kn, stride_kd, stride_vn, stride_vd, qk_scale,
                BLOCK_N, HEAD_DIM, MASKED, CAUSAL, USE_EXP2, USE_TMA, KV_EVICT, KV_CACHE,
                DOT_PRECISION, BF16_DOT_IN_FP32,
            )  # fmt: skip
    return acc, l_i, m_i


@_jit
def flash_fwd(
    Q,
    K,
    V,
    Out,
    stride_qb,
    stride_qh,
    stride_qm,
    stride_qd,
    stride_kb,
    stride_kh,
    stride_kn,
    stride_kd,
    stride_vb,
    stride_vh,
    stride_vn,
    stride_vd,
    stride_ob,
    stride_oh,
    stride_om,
    stride_od,
    heads_q,
    group,
    seq_q,
    seq_kv,
    qk_scale,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    CAUSAL: tl.constexpr,
    CAUSAL_SKIP: tl.constexpr,
    USE_EXP2: tl.constexpr,
    USE_TMA: tl.constexpr,
    WARP_SPECIALIZE: tl.constexpr,
    KV_EVICT: tl.constexpr,
    KV_CACHE: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BF16_DOT_IN_FP32: tl.constexpr,
):
    """One program: BLOCK_M queries of one (batch, query head). Grid: (q blocks, B * Hq)."""
    start_m = tl.program_id(0)
    off_bh = tl.program_id(1)
    off_b = off_bh // heads_q
    off_h = off_bh % heads_q
    off_kvh = off_h // group  # GQA: query heads h*group .. h*group+group-1 share kv head h
    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)

    if USE_TMA:
        # 4-D descriptors: out-of-range rows read as zeros and are dropped on store, per head.
        q = tl.reshape(Q.load([off_b, off_h, start_m * BLOCK_M, 0]), (BLOCK_M, HEAD_DIM))
        k_src = K
        v_src = V
    else:
        # int64 head offsets: B * H * S * D can pass 2**31 elements.
        q_ptrs = (
            Q
            + off_b.to(tl.int64) * stride_qb
            + off_h.to(tl.int64) * stride_qh
            + offs_m[:, None] * stride_qm
            + offs_d[None, :] * stride_qd
        )
        q = tl.load(q_ptrs, mask=offs_m[:, None] < seq_q, other=0.0)
        k_src = K + off_b.to(tl.int64) * stride_kb + off_kvh.to(tl.int64) * stride_kh
        v_src = V + off_b.to(tl.int64) * stride_vb + off_kvh.to(tl.int64) * stride_vh

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)

    # Key blocks [0, full_hi) are wholly visible to every query of this block: no mask there.
    hi = seq_kv
    full_hi = (seq_kv // BLOCK_N) * BLOCK_N
    if CAUSAL:
        # A key block is wholly visible when its last key <= the block's first query.
        full_hi = tl.minimum(full_hi, ((start_m * BLOCK_M) // BLOCK_N) * BLOCK_N)
        if CAUSAL_SKIP:
            # Keys past the block's last query are invisible to all its queries: skip them.
            hi = tl.minimum(seq_kv, (start_m + 1) * BLOCK_M)

    acc, l_i, m_i = _attend_range(
        acc, l_i, m_i, q, k_src, v_src, off_b, off_kvh, 0, full_hi, offs_m, seq_kv,
        stride_kn, stride_kd, stride_vn, stride_vd, qk_scale,
        BLOCK_N, HEAD_DIM, False, CAUSAL, USE_EXP2, USE_TMA, WARP_SPECIALIZE, KV_EVICT, KV_CACHE,
        DOT_PRECISION, BF16_DOT_IN_FP32,
    )  # fmt: skip
    acc, l_i, m_i = _attend_range(
        acc, l_i, m_i, q, k_src, v_src, off_b, off_kvh, full_hi, hi, offs_m, seq_kv,
        stride_kn, stride_kd, stride_vn, stride_vd, qk_scale,
        BLOCK_N, HEAD_DIM, True, CAUSAL, USE_EXP2, USE_TMA, WARP_SPECIALIZE, KV_EVICT, KV_CACHE,
        DOT_PRECISION, BF16_DOT_IN_FP32,
    )  # fmt: skip

    # A row with no visible key (cannot happen with a top-left mask) gives 0, not 0/0 = NaN.
    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    if BF16_DOT_IN_FP32:
        out = _bf16_nearest(acc / l_safe[:, None])
    else:
        out = (acc / l_safe[:, None]).to(q.dtype)  # Out has q's dtype
    if USE_TMA:
        Out.store([off_b, off_h, start_m * BLOCK_M, 0], tl.reshape(out, (1, 1, BLOCK_M, HEAD_DIM)))
    else:
        o_ptrs = (
            Out
            + off_b.to(tl.int64) * stride_ob
            + off_h.to(tl.int64) * stride_oh
            + offs_m[:, None] * stride_om
            + offs_d[None, :] * stride_od
        )
        tl.store(o_ptrs, out, mask=offs_m[:, None] < seq_q)


def _interpreting() -> bool:
    """Whether TRITON_INTERPRET=1 is set now (Triton reads it when it jits a function)."""
    knobs = getattr(triton, "knobs", None)
    if knobs is not None:
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def _is_interpreted(fn: Any) -> bool:
    return type(fn).__name__ == "InterpretedFunction"


# Both this kernel and Triton's library functions (tl.zeros, ...) must be in the same mode.
KERNEL_INTERPRETED = triton is not None and _is_interpreted(flash_fwd)
TRITON_INTERPRETED = triton is not None and _is_interpreted(tl.zeros)


# ----------------------------------------------------------------------------------------------
# What this Triton and this device offer.
# ----------------------------------------------------------------------------------------------


class DeviceFacts(NamedTuple):
    """What valid() needs to know of a CUDA device."""

    capability: tuple[int, int]
    shared_per_block: int  # bytes of shared memory one block may ask for (the opt-in maximum)


@functools.cache
def device_facts(device: str) -> DeviceFacts:
    """The device's facts; the sm_90 compile check (_triton_aot.as_device) stands in its own.

    The shared-memory limit is the one Triton checks at launch (its driver's max_shared_mem);
    0 where it cannot be read (valid() then leaves the launch to say).
    """
    index = torch.device(device).index
    index = torch.cuda.current_device() if index is None else index
    try:
        props = triton.runtime.driver.active.utils.get_device_properties(index)
        shared = int(props["max_shared_mem"])
    except Exception:  # a driver that cannot say: torch's figure, else no limit known
        optin = getattr(torch.cuda.get_device_properties(index), "shared_memory_per_block_optin", 0)
        shared = int(optin)
    return DeviceFacts(torch.cuda.get_device_capability(index), shared)


def shared_bytes(problem: Problem, params: dict[str, Any]) -> int:
    """The shared memory a launch asks for, from its tiles: what Triton 3.6 and 3.9 allocate
    for sm_90 without TMA, an upper bound with it (the compile check holds it to that).

    With wgmma (BLOCK_M >= 64, fp16/bf16) every one of the num_stages buffers of a K and a V
    tile and the Q tile live in shared memory; with mma.sync (smaller BLOCK_M) num_stages - 1
    K and V buffers, Q, and the BLOCK_M x BLOCK_N probabilities of the second dot. TMA adds its
    barriers (and, below BLOCK_M 64, leaves Q out).
    """
    size = problem.dtype.itemsize
    d, bm, bn, stages = problem.head_dim, params["BLOCK_M"], params["BLOCK_N"], params["num_stages"]
    if bm >= 64:
        total = (stages * 2 * bn + bm) * d * size
    else:
        total = bm * d * size + bn * ((stages - 1) * 2 * d + bm) * size
    return total + (1024 if params["tma"] else 0)


def _hopper_reason(problem: Problem, feature: str) -> str | None:
    """None where a Hopper-only switch can apply to `problem`, else why not (no CUDA on CPUs)."""
    if not problem.is_cuda:
        return f"{feature} needs a CUDA GPU of compute capability >= 9 (Hopper)"
    major, minor = device_facts(problem.device).capability
    if major < 9:
        return f"{feature} needs compute capability >= 9 (Hopper); this GPU is {major}.{minor}"
    return None


def _tma_ready(t: torch.Tensor) -> bool:
    """TMA wants a unit last stride and 16-byte aligned base and strides."""
    if t.stride(-1) != 1 or t.data_ptr() % 16:
        return False
    return all((s * t.element_size()) % 16 == 0 for s in t.stride()[:-1])


def _largest_useful_block(choices: list[int], extent: int) -> int:
    """next_power_of_2(extent), but never below the smallest choice (which always stays)."""
    return max(min(choices), 1 << (extent - 1).bit_length())


# ----------------------------------------------------------------------------------------------
# Registration.
# ----------------------------------------------------------------------------------------------


def supports(problem: Problem) -> str | None:
    """None where the kernel can run `problem`, else a one-line reason."""
    if triton is None:
        return "triton is not installed"
    if problem.dtype not in DTYPES:
        return f"triton_flash handles float16, bfloat16 and float32, not {problem.dtype}"
    d = problem.head_dim
    if d < 16 or d > 256 or d & (d - 1):
        return f"head_dim {d} is not a power of two in 16..256 (tl.arange needs a power of two)"
    if problem.is_cuda:
        if _interpreting() or KERNEL_INTERPRETED or TRITON_INTERPRETED:
            return "TRITON_INTERPRET=1 is set: the kernel would run in the interpreter, not the GPU"
        return None
    if problem.device == "cpu":
        if not _interpreting():
            return "Triton on the CPU needs TRITON_INTERPRET=1"
        if not (KERNEL_INTERPRETED and TRITON_INTERPRETED):
            return "TRITON_INTERPRET=1 was set after triton was imported: set it before importing"
        return None
    return (
        f"triton_flash runs on CUDA, or on the CPU under TRITON_INTERPRET=1, not {problem.device}"
    )


def _hint_reason(problem: Problem, params: dict[str, Any]) -> str | None:
    """None where the load hints change the compiled code (see HINTS_REACH_CODE), else why not."""
    cache = params["kv_cache"]
    if not problem.is_cuda:
        return "kv_eviction/kv_cache: the interpreter ignores load hints"
    if not HINTS_REACH_CODE:
        return (
            f"kv_eviction/kv_cache: Triton {triton.__version__} drops them from the K/V loads "
            "it pipelines (cp.async): the same code as without"
        )
    if cache == ".cg":
        return "kv_cache='.cg' is what the pipelined K/V loads (cp.async.cg) use anyway"
    if cache == ".ca" and _kv_bytes_per_thread(problem, params) < 16:
        # cp.async.cg moves 16 bytes only: with less per thread the loads are cp.async.ca
        # already (sm_90 compile check: BLOCK_N=16, D=64, bf16, 8 warps gives the same PTX)
        return (
            f"kv_cache='.ca' is what the K/V loads use anyway at {params['BLOCK_N']}x"
            f"{problem.head_dim} per {params['num_warps']} warps (under 16 bytes a thread)"
        )
    return None


def _kv_bytes_per_thread(problem: Problem, params: dict[str, Any]) -> float:
    """Bytes of one K (or V) tile each thread copies: the width of its cp.async."""
    tile = params["BLOCK_N"] * problem.head_dim * problem.dtype.itemsize
    return tile / (32 * params["num_warps"])


def valid(problem: Problem, **params: Any) -> str | None:
    """None where the combination is worth timing, else a one-line reason it is meaningless."""
    block_m, block_n = params["BLOCK_M"], params["BLOCK_N"]
    fit_m = _largest_useful_block(BLOCK_M_CHOICES, problem.seq_q)
    if block_m > fit_m:
        return f"BLOCK_M {block_m} > {fit_m}: seq_q {problem.seq_q} fits a smaller block"
    fit_n = _largest_useful_block(BLOCK_N_CHOICES, problem.seq_kv)
    if block_n > fit_n:
        return f"BLOCK_N {block_n} > {fit_n}: seq_kv {problem.seq_kv} fits a smaller block"
    if params["causal_skip"] and not problem.causal:
        return "causal_skip is inert without a causal mask"
    if params["warp_specialize"]:
        return WARP_SPECIALIZE_REASON
    if params["tma"]:
        if TensorDescriptor is None:
            return "this Triton has no host TensorDescriptor (tma)"
        reason = _hopper_reason(problem, "tma")
        if reason:
            return reason
        if params["kv_eviction"] or params["kv_cache"]:
            return "kv_eviction/kv_cache do not apply to tensor-descriptor (tma) loads"
    if params["kv_eviction"] or params["kv_cache"]:
        reason = _hint_reason(problem, params)
        if reason:
            return reason
    if problem.is_cuda:
        limit = device_facts(problem.device).shared_per_block
        need = shared_bytes(problem, params)
        if limit and need > limit:
            return f"needs {need} B of shared memory per block; this GPU allows {limit} B"
    return None


@dataclasses.dataclass(frozen=True)
class LaunchPlan:
    """Everything of a flash_fwd launch but the tensors, made once by build().

    The sm_90 compile check (kernels/builtin/_triton_aot.py) compiles from the same plan, so what
    it checks is what build() launches.
    """

    grid: tuple[int, int]
    scalars: tuple[Any, ...]  # heads_q, group, seq_q, seq_kv, qk_scale
    consts: dict[str, Any]  # the constexprs, num_warps and num_stages (USE_TMA is per call)
    out_shape: tuple[int, int, int, int]
    out_strides: tuple[int, int, int, int]  # contiguous
    q_block: list[int]
    kv_block: list[int]

    def pointer_args(self, q: Any, k: Any, v: Any, out: Any) -> tuple[Any, ...]:
        strides = (*q.stride(), *k.stride(), *v.stride(), *self.out_strides)
        return (q, k, v, out, *strides, *self.scalars)

    def tma_args(self, q: Any, k: Any, v: Any, out: Any) -> tuple[Any, ...]:
        descs = (
            TensorDescriptor(q, list(q.shape), list(q.stride()), self.q_block),
            TensorDescriptor(k, list(k.shape), list(k.stride()), self.kv_block),
            TensorDescriptor(v, list(v.shape), list(v.stride()), self.kv_block),
            TensorDescriptor(out, list(self.out_shape), list(self.out_strides), self.q_block),
        )
        return (*descs, *(0,) * 16, *self.scalars)  # strides are unused on the descriptor path


def launch_plan(
    problem: Problem,
    BLOCK_M: int,
    BLOCK_N: int,
    num_warps: int,
    num_stages: int,
    exp2: bool,
    causal_skip: bool,
    kv_eviction: str,
    kv_cache: str,
    warp_specialize: bool,
) -> LaunchPlan:
    """The grid, scalars and constexprs of `problem` under one parameter combination."""
    if kv_eviction not in KNOWN_KV_EVICTION or kv_cache not in KNOWN_KV_CACHE:
        raise ValueError(f"kv_eviction {kv_eviction!r} / kv_cache {kv_cache!r} not known")
    batch, heads_q, seq_q, head_dim = problem.q_shape()
    group = problem.heads_q // problem.heads_kv
    qk_scale = problem.scale * LOG2E if exp2 else problem.scale
    # float32 must not drop to TF32 in tl.dot: the gate compares with full-precision matmuls.
    precision = "ieee" if problem.dtype == torch.float32 else "tf32"
    # Triton's interpreter gets tl.dot on bfloat16 wrong (raw bits) and truncates float32 ->
    # bfloat16 casts: upcast there, exactly, and round by hand (_bf16_nearest).
    bf16_in_fp32 = problem.dtype == torch.bfloat16 and KERNEL_INTERPRETED
    if bf16_in_fp32:
        precision = "ieee"
    consts: dict[str, Any] = dict(
        BLOCK_M=BLOCK_M,
        BLOCK_N=BLOCK_N,
        HEAD_DIM=head_dim,
        CAUSAL=problem.causal,
        CAUSAL_SKIP=causal_skip,
        USE_EXP2=exp2,
        WARP_SPECIALIZE=warp_specialize,
        KV_EVICT=kv_eviction,
        KV_CACHE=kv_cache,
        DOT_PRECISION=precision,
        BF16_DOT_IN_FP32=bf16_in_fp32,
        num_warps=num_warps,
        num_stages=num_stages,
    )
    return LaunchPlan(
        grid=(triton.cdiv(seq_q, BLOCK_M), batch * heads_q),
        scalars=(heads_q, group, seq_q, problem.seq_kv, qk_scale),
        consts=consts,
        out_shape=problem.q_shape(),
        out_strides=(seq_q * heads_q * head_dim, seq_q * head_dim, head_dim, 1),
        q_block=[1, 1, BLOCK_M, head_dim],
        kv_block=[1, 1, BLOCK_N, head_dim],
    )


@register(
    "triton_flash",
    params={
        "BLOCK_M": list(BLOCK_M_CHOICES),
        "BLOCK_N": list(BLOCK_N_CHOICES),
        "num_warps": [4, 8],
        "num_stages": [2, 3, 4],
        "exp2": [True, False],
        "causal_skip": [True, False],
        "kv_eviction": list(KV_EVICTION),
        "kv_cache": list(KV_CACHE),
        "tma": [False, True],
        "warp_specialize": [False],  # WARP_SPECIALIZE_REASON
    },
    supports=supports,
    valid=valid,
    tags=("triton",),
)
def build(
    problem: Problem,
    BLOCK_M: int = 64,
    BLOCK_N: int = 64,
    num_warps: int = 4,
    num_stages: int = 2,
    exp2: bool = True,
    causal_skip: bool = True,
    kv_eviction: str = "",
    kv_cache: str = "",
    tma: bool = False,
    warp_specialize: bool = False,
):
    """Triton flash-attention forward: online softmax over key blocks, GQA by head mapping."""
    plan = launch_plan(
        problem, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, num_warps=num_warps, num_stages=num_stages,
        exp2=exp2, causal_skip=causal_skip, kv_eviction=kv_eviction, kv_cache=kv_cache,
        warp_specialize=warp_specialize,
    )  # fmt: skip
    grid, consts, device = plan.grid, plan.consts, torch.device(problem.device)
    out_shape, dtype = plan.out_shape, problem.dtype

    def run_pointers(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        out = torch.empty(out_shape, dtype=dtype, device=device)
        flash_fwd[grid](*plan.pointer_args(q, k, v, out), USE_TMA=False, **consts)
        return out

    if not tma:
        return run_pointers

    def run_tma(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if not (_tma_ready(q) and _tma_ready(k) and _tma_ready(v)):
            return run_pointers(q, k, v)  # TMA cannot address these strides: same kernel, pointers
        out = torch.empty(out_shape, dtype=dtype, device=device)
        flash_fwd[grid](*plan.tma_args(q, k, v, out), USE_TMA=True, **consts)
        return out

    return run_tma
