"""The float64 reference itself, checked against an independent loop-by-loop computation, and
its blocked form (long problems) against the whole."""

from __future__ import annotations

import math
import os

import pytest
import torch

from kernels import (
    attention_blocks,
    kv_heads,
    plain_attention,
    plain_blocks,
    reference_attention,
    reference_blocks,
)
from kernels._reference import REFERENCE_BYTES_PER_KEY, REFERENCE_BYTES_PER_SCORE


def loop_attention(q, k, v, causal: bool, scale: float) -> torch.Tensor:
    """Row by row in Python floats: slow, obviously right."""
    b_, hq, sq, d = q.shape
    hkv, skv = k.shape[1], k.shape[2]
    out = torch.empty(b_, hq, sq, d, dtype=torch.float64)
    for b in range(b_):
        for h in range(hq):
            kh = h // (hq // hkv)
            for i in range(sq):
                keys = range(min(i + 1, skv)) if causal else range(skv)
                scores = [scale * float(q[b, h, i].double() @ k[b, kh, j].double()) for j in keys]
                peak = max(scores)
                weights = [math.exp(s - peak) for s in scores]
                total = sum(weights)
                row = sum(w * v[b, kh, j].double() for w, j in zip(weights, keys, strict=True))
                out[b, h, i] = row / total
    return out


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("shape", [(1, 2, 2, 5, 5, 8), (2, 4, 2, 7, 3, 4), (1, 2, 1, 3, 9, 8)])
def test_reference_matches_loops(shape, causal, fresh_seed):
    b, hq, hkv, sq, skv, d = shape
    gen = torch.Generator().manual_seed(fresh_seed)
    q = torch.randn(b, hq, sq, d, generator=gen)
    k = torch.randn(b, hkv, skv, d, generator=gen)
    v = torch.randn(b, hkv, skv, d, generator=gen)
    scale = d**-0.5
    ref = reference_attention(q, k, v, causal, scale)
    assert ref.dtype == torch.float64
    torch.testing.assert_close(ref, loop_attention(q, k, v, causal, scale), rtol=1e-10, atol=1e-10)
    plain = plain_attention(q, k, v, causal, scale)
    assert plain.dtype == torch.float32
    assert (plain.double() - ref).abs().max() < 1e-5


# -- blocks: the reference and the yardstick of long problems ------------------------------------
def random_inputs(shape, seed, dtype=torch.float64):
    b, hq, hkv, sq, skv, d = shape
    gen = torch.Generator().manual_seed(seed)
    return tuple(
        torch.randn(*dims, generator=gen, dtype=torch.float64).to(dtype)
        for dims in ((b, hq, sq, d), (b, hkv, skv, d), (b, hkv, skv, d))
    )


def covered(blocks, shape) -> torch.Tensor:
    """How many blocks cover each (batch, head, row)."""
    count = torch.zeros(shape[0], shape[1], shape[2], dtype=torch.int64)
    for batch, heads, rows in blocks:
        count[batch, heads, rows] += 1
    return count


def whole_cost(shape) -> int:
    b, hq, _, sq, skv, d = shape
    return b * hq * (sq * skv * REFERENCE_BYTES_PER_SCORE + skv * d * REFERENCE_BYTES_PER_KEY)


# (batch, heads_q, heads_kv, seq_q, seq_kv, head_dim): GQA and not, seq_q above and below seq_kv
SHAPES = [(2, 4, 2, 37, 29, 8), (3, 6, 2, 20, 41, 16), (2, 4, 4, 33, 33, 8), (1, 8, 1, 64, 16, 4)]


# budgets (fractions of the whole problem's cost) that force each way of cutting it
@pytest.mark.parametrize("fraction", [1.0, 0.5, 0.24, 0.1, 0.02, 0.001])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
def test_blocked_reference_equals_the_whole(shape, causal, fraction, fresh_seed):
    q, k, v = random_inputs(shape, fresh_seed)
    scale = shape[-1] ** -0.5
    budget = int(whole_cost(shape) * fraction)
    blocks = reference_blocks(q, k, budget)
    assert torch.equal(covered(blocks, q.shape), torch.ones(q.shape[:3], dtype=torch.int64))
    assert (len(blocks) == 1) == (fraction == 1.0)
    whole = reference_attention(q, k, v, causal, scale, budget=whole_cost(shape))
    blocked = reference_attention(q, k, v, causal, scale, budget=budget)
    torch.testing.assert_close(blocked, whole, rtol=1e-12, atol=1e-13)
    if fraction == 1.0:  # and both are attention: the loops agree with the whole
        loops = loop_attention(q, k, v, causal, scale)
        torch.testing.assert_close(whole, loops, rtol=1e-10, atol=1e-10)


def test_blocks_of_long_hd128_fit_the_budget():
    """B4 H32 S8192 D128: one float64 score matrix is 64 GiB; a 2 GiB budget cuts it into
    single heads (1 GiB of scores each), a 64 MiB one into blocks of 256 rows of one head (32 MiB
    of scores, 32 MiB of K/V)."""
    q_shape = (4, 32, 8192, 128)
    assert 4 * 32 * 8192 * 8192 * 8 == 64 * 1024**3

    def cost(block) -> int:
        batch, heads, rows = block
        n_heads = (batch.stop - batch.start) * (heads.stop - heads.start)
        n_rows = rows.stop - rows.start
        return n_heads * (
            n_rows * 8192 * REFERENCE_BYTES_PER_SCORE + 8192 * 128 * REFERENCE_BYTES_PER_KEY
        )

    for budget, heads_per_block, rows_per_block in ((2 * 1024**3, 1, 8192), (64 * 1024**2, 1, 256)):
        blocks = attention_blocks(
            q_shape, 32, 8192, REFERENCE_BYTES_PER_SCORE, REFERENCE_BYTES_PER_KEY, budget
        )
        assert max(cost(b) for b in blocks) <= budget
        first = blocks[0]
        assert first[1].stop - first[1].start == heads_per_block
        assert first[2].stop - first[2].start == rows_per_block
        assert torch.equal(covered(blocks, q_shape), torch.ones(q_shape[:3], dtype=torch.int64))
    # GQA (llama3_8b_prefill: H32 kv8 S4096): whole groups of 4 heads share one K/V block
    blocks = attention_blocks((1, 32, 4096, 128), 8, 4096, 16, 32, 2 * 1024**3)
    assert {(b[1].stop - b[1].start) for b in blocks} == {4}
    assert all(kv_heads(b[1], 4) == slice(b[1].start // 4, b[1].start // 4 + 1) for b in blocks)
    # a budget under one row still makes progress, one row at a time
    assert len(attention_blocks((1, 1, 5, 8), 1, 1000, 16, 32, 10)) == 5


def test_plain_blocks_equal_the_whole_plain(fresh_seed):
    """The yardstick's blocks: plain_attention on rows from q_start on is the whole one's rows
    (to the rounding of another GEMM blocking: CPU BLAS sums a block's dot products in another
    order, 1 ulp of float32 here and there)."""
    for dtype, causal in ((torch.float32, True), (torch.bfloat16, False), (torch.bfloat16, True)):
        q, k, v = random_inputs((2, 6, 2, 40, 40, 16), fresh_seed, dtype)
        whole = plain_attention(q, k, v, causal, 0.25)
        blocks = plain_blocks(q, k, budget=3000)
        assert len(blocks) > 2 * 6 and any(b[2].start > 0 for b in blocks)
        for batch, heads, rows in blocks:
            kv = kv_heads(heads, 3)
            part = plain_attention(
                q[batch, heads, rows], k[batch, kv], v[batch, kv], causal, 0.25, q_start=rows.start
            )
            torch.testing.assert_close(part, whole[batch, heads, rows])


PEAK_SCRIPT = """
import sys, torch
from pathlib import Path
from kernels import reference_attention

def status_kb(field):
    lines = Path("/proc/self/status").read_text().splitlines()
    return int(next(x for x in lines if x.startswith(field)).split()[1])

torch.set_num_threads(1)
gen = torch.Generator().manual_seed(int(sys.argv[2]))
q = torch.randn(1, 4, 2048, 32, generator=gen, dtype=torch.float64)
k, v = torch.randn(2, 1, 4, 2048, 32, generator=gen, dtype=torch.float64)
reference_attention(q[:, :, :8], k, v, True, 0.2, budget=int(sys.argv[1]))  # warm up
Path("/proc/self/clear_refs").write_text("5")  # the peak resident size starts again from now
before = status_kb("VmRSS")
reference_attention(q, k, v, True, 0.2, budget=int(sys.argv[1]))
print((status_kb("VmHWM") - before) * 1024)
"""


def test_blocked_reference_peak_memory_is_bounded(fresh_seed):
    """Measured in a fresh process (the peak resident size, reset through /proc/self/clear_refs
    before the call: torch's CPU allocations are malloc, not Python's, so tracemalloc is blind):
    the whole reference of B1 H4 S2048 holds 128 MiB of float64 scores at least; under an 8 MiB
    budget the peak grows by far less."""
    import subprocess
    import sys

    if not os.access("/proc/self/clear_refs", os.W_OK):
        pytest.skip("this kernel cannot reset the peak resident size (/proc/self/clear_refs)")

    def growth(budget: int) -> int:
        proc = subprocess.run(
            [sys.executable, "-c", PEAK_SCRIPT, str(budget), str(fresh_seed)],
            capture_output=True, text=True, timeout=300, check=True,
        )  # fmt: skip
        return int(proc.stdout.split()[-1])

    whole, blocked = growth(1 << 40), growth(8 * 1024**2)
    assert whole >= 128 * 1024**2, whole
    assert blocked <= 40 * 1024**2, blocked


LIMITED_SCRIPT = """
import resource
from pathlib import Path
import kernels
from kernels import _memory

vm_kb = next(int(x.split()[1]) for x in Path("/proc/self/status").read_text().splitlines()
             if x.startswith("VmSize"))
free = kernels.free_bytes("cpu")
_, hard = resource.getrlimit(resource.RLIMIT_AS)
resource.setrlimit(resource.RLIMIT_AS, (vm_kb * 1024 + 200 * 1024**2, hard))
print(free, kernels.free_bytes("cpu"), kernels.block_budget("cpu"))
"""


def test_free_memory_of_the_host_and_under_an_address_space_limit():
    """What the blocks are sized from: MemAvailable, and no more than an address-space limit
    (the CPU worker's) leaves; a block gets a quarter of it, within the floor and the cap."""
    import subprocess
    import sys

    from kernels import _memory

    total_kb = _memory._meminfo_kb("MemTotal")
    free = _memory.free_bytes("cpu")
    assert 0 < free <= total_kb * 1024
    budget = _memory.block_budget("cpu")
    assert budget == max(_memory.BUDGET_FLOOR, min(_memory.BUDGET_CAP, free // 4))
    proc = subprocess.run(
        [sys.executable, "-c", LIMITED_SCRIPT],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    unlimited, limited, limited_budget = (int(x) for x in proc.stdout.split())
    assert unlimited > 1024**3 and 0 < limited <= 200 * 1024**2
    assert limited_budget == max(_memory.BUDGET_FLOOR, limited // 4) <= 50 * 1024**2
