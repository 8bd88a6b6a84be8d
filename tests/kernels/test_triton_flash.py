"""The Triton flash-attention variant under the Triton interpreter, against the float64 reference.

TRITON_INTERPRET must be set before triton is imported (triton.jit picks the mode then), and a
process that sets it keeps it: every later test and every worker it spawns would run in the
interpreter too. So the tests marked `interpreter` run in a child pytest process started by
test_interpreter_cases_in_a_child_process, with TRITON_INTERPRET=1 in its environment from the
start; in this process (tests/conftest.py deselects them) nothing sets it. Shapes stay small: the
interpreter runs every program of the grid in NumPy.
"""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")

import kernels  # noqa: E402
from kernels import Problem, reference_attention  # noqa: E402
from kernels.builtin.triton_flash import _bf16_nearest  # noqa: E402
from study.measure.gate import ATOL, plain_error  # noqa: E402

interpreter = pytest.mark.interpreter  # run in the child: test_interpreter_cases_in_a_child_...
ROOT = Path(__file__).resolve().parents[2]  # the repository
F16, BF16, F32 = torch.float16, torch.bfloat16, torch.float32


def _variant() -> kernels.Variant:
    return kernels.variants()["triton_flash"]


def _seed() -> int:
    """Fresh inputs each run; TRITON_FLASH_SEED=N replays a failure (the seed is in its message)."""
    fixed = os.environ.get("TRITON_FLASH_SEED")
    return int(fixed) if fixed else int.from_bytes(os.urandom(4), "little") % (2**31)


def _inputs(problem: Problem, seed: int, layout: str = "bhsd"):
    """q, k, v drawn fresh; 'bshd' gives non-contiguous (B, H, S, D) views of (B, S, H, D) data."""
    gen = torch.Generator().manual_seed(seed)

    def draw(heads: int, seq: int) -> torch.Tensor:
        b, d = problem.batch, problem.head_dim
        if layout == "bshd":
            return torch.randn(b, seq, heads, d, generator=gen).to(problem.dtype).transpose(1, 2)
        return torch.randn(b, heads, seq, d, generator=gen).to(problem.dtype)

    q = draw(problem.heads_q, problem.seq_q)
    k = draw(problem.heads_kv, problem.seq_kv)
    v = draw(problem.heads_kv, problem.seq_kv)
    return q, k, v


def _check(problem: Problem, params: dict, seed: int, layout: str = "bhsd", check_valid=True):
    """Build with `params` over the defaults, run once, hold the output to the gate's bound."""
    variant = _variant()
    assert variant.supports(problem) is None, variant.supports(problem)
    full = {**variant.default_params(), "causal_skip": problem.causal, **params}
    if check_valid:
        assert variant.valid(problem, full) is None, variant.valid(problem, full)
    q, k, v = _inputs(problem, seed, layout)
    if layout == "bshd":
        assert not q.is_contiguous()
    originals = [t.clone() for t in (q, k, v)]
    out = variant.build(problem, **full)(q, k, v)
    assert out.shape == problem.q_shape() and out.dtype == problem.dtype
    assert not torch.isnan(out).any()
    for before, after in zip(originals, (q, k, v), strict=True):
        assert torch.equal(before, after), "the kernel wrote into its inputs"
    ref = reference_attention(q, k, v, problem.causal, problem.scale)
    bound = 2 * plain_error(problem, q, k, v, ref) + ATOL[problem.dtype]  # the gate's bound
    err = (out.double() - ref).abs().max().item()
    assert err <= bound, f"seed={seed} {problem.signature()} {params}: {err:.3e} > {bound:.3e}"


def _case(shape, dtype, causal, params, layout="bhsd", case_id="", scale=None):
    return pytest.param(shape, dtype, causal, params, layout, scale, id=case_id)


# (batch, heads_q, heads_kv, seq_q, seq_kv, head_dim), dtype, causal, params over the defaults.
CASES = [
    _case((1, 2, 2, 77, 45, 64), F32, False, {}, case_id="tails-fp32-full-defaults"),
    _case((1, 2, 2, 77, 45, 64), F16, True, {"BLOCK_M": 32, "BLOCK_N": 16}, case_id="tails-causal"),
    _case(
        (1, 2, 2, 130, 33, 64),
        F16,
        True,
        {"BLOCK_M": 64, "BLOCK_N": 32, "causal_skip": False},
        case_id="sq>skv-causal-noskip",
    ),
    _case((1, 2, 2, 100, 40, 64), F32, False, {"BLOCK_N": 16}, case_id="sq>skv-full"),
    _case(
        (1, 4, 2, 64, 96, 64),
        F16,
        True,
        {"BLOCK_M": 32, "num_warps": 8, "num_stages": 4},
        case_id="gqa-4-2-causal",
    ),
    _case((1, 4, 1, 50, 70, 128), F32, False, {"BLOCK_M": 16}, case_id="mqa-4-1-d128"),
    _case((1, 4, 2, 1, 100, 64), F16, False, {"BLOCK_M": 16, "BLOCK_N": 32}, case_id="decode"),
    _case((1, 4, 1, 1, 100, 128), F32, True, {"BLOCK_M": 16}, case_id="decode-causal-mqa"),
    _case(
        (1, 2, 2, 130, 130, 128),
        F16,
        True,
        {"BLOCK_M": 64, "BLOCK_N": 64, "exp2": False},
        case_id="d128-causal-square",
    ),
    _case((1, 1, 1, 129, 129, 128), F32, False, {"BLOCK_M": 128, "BLOCK_N": 128}, case_id="big"),
    _case(
        (1, 4, 2, 77, 45, 64),
        F16,
        True,
        {"BLOCK_M": 32, "BLOCK_N": 32},
        "bshd",
        case_id="bshd-gqa-causal",
    ),
    _case(
        (1, 2, 2, 33, 100, 128),
        F32,
        False,
        {"BLOCK_M": 16, "BLOCK_N": 16, "exp2": False},
        "bshd",
        case_id="bshd-fp32-d128",
    ),
    _case((1, 2, 1, 64, 80, 64), BF16, True, {"BLOCK_N": 32}, case_id="bf16-causal"),
    _case((1, 1, 1, 20, 20, 16), F32, True, {"BLOCK_M": 32, "BLOCK_N": 32}, case_id="d16"),
    _case((1, 1, 1, 20, 40, 256), F16, False, {"BLOCK_M": 32, "BLOCK_N": 64}, case_id="d256"),
    _case((1, 2, 2, 50, 50, 64), F32, True, {"BLOCK_M": 16}, case_id="scale", scale=0.3),
]


@interpreter
@pytest.mark.parametrize("shape,dtype,causal,params,layout,scale", CASES)
def test_matches_reference(shape, dtype, causal, params, layout, scale):
    problem = Problem(*shape, dtype=dtype, causal=causal, scale=scale, device="cpu")
    _check(problem, params, _seed(), layout)


@interpreter
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_every_valid_tiling(causal):
    """Every valid BLOCK_M x BLOCK_N x causal_skip on one tailed GQA problem, exp2 alternating."""
    problem = Problem(1, 2, 1, 40, 70, 32, dtype=F16, causal=causal)
    variant = _variant()
    seed, checked = _seed(), 0
    keys = ("BLOCK_M", "BLOCK_N", "causal_skip")
    for values in itertools.product(*(variant.params[k] for k in keys)):
        params = {**variant.default_params(), **dict(zip(keys, values, strict=True))}
        params["exp2"] = checked % 2 == 0
        if variant.valid(problem, params):
            continue
        _check(problem, params, seed + checked)
        checked += 1
    # BLOCK_M 16/32/64 (128 > seq_q), BLOCK_N 16/32/64/128, causal_skip on/off where causal.
    assert checked == 3 * 4 * (2 if causal else 1)


# The descriptor, warp-specialisation and load-hint paths are GPU-only in the search (valid()
# rejects them on the CPU), but the interpreter runs them, so their indexing is checked here.
HOPPER_CASES = [
    _case(
        (1, 2, 2, 77, 45, 64),
        F16,
        True,
        {
            "BLOCK_M": 32,
            "BLOCK_N": 16,
            "exp2": False,
            "causal_skip": False,
            "kv_eviction": "evict_last",
            "kv_cache": ".cg",
        },
        case_id="tails-causal-noskip-exp-hints",
    ),
    _case(
        (1, 2, 2, 45, 77, 64),
        F32,
        True,
        {"BLOCK_M": 16, "BLOCK_N": 32, "kv_eviction": "evict_first", "kv_cache": ".ca"},
        case_id="sq<skv-causal",
    ),
    _case(
        (1, 4, 2, 45, 77, 64),
        F16,
        True,
        {"BLOCK_M": 16, "BLOCK_N": 32, "tma": True},
        case_id="tma-gqa-causal",
    ),
    _case(
        (1, 2, 2, 77, 45, 64),
        F32,
        False,
        {"BLOCK_M": 32, "BLOCK_N": 16, "tma": True},
        "bshd",
        case_id="tma-bshd",
    ),
    _case(
        (1, 2, 1, 33, 50, 64),
        F32,
        True,
        {"BLOCK_M": 16, "warp_specialize": True},
        case_id="warp-specialize",
    ),
    _case(
        (1, 2, 1, 33, 50, 64),
        F16,
        True,
        {"BLOCK_M": 16, "BLOCK_N": 16, "tma": True, "warp_specialize": True},
        "bshd",
        case_id="tma-and-ws",
    ),
    _case(
        (1, 4, 2, 40, 70, 64),
        BF16,
        True,
        {"BLOCK_M": 32, "BLOCK_N": 32, "tma": True},
        case_id="tma-bf16",
    ),
]


@interpreter
@pytest.mark.parametrize("shape,dtype,causal,params,layout,scale", HOPPER_CASES)
def test_hopper_paths_under_interpreter(shape, dtype, causal, params, layout, scale):
    problem = Problem(*shape, dtype=dtype, causal=causal, scale=scale, device="cpu")
    _check(problem, params, _seed(), layout, check_valid=False)


@interpreter
def test_tma_falls_back_to_pointers_for_strides_tma_cannot_address():
    """A K view with a last stride of 2 cannot be a tensor descriptor: same result via pointers."""
    problem = Problem(1, 2, 2, 40, 50, 64, dtype=F32, causal=True)
    variant = _variant()
    params = {**variant.default_params(), "BLOCK_M": 16, "tma": True}
    q, k, v = _inputs(problem, _seed())
    k_strided = torch.zeros(*k.shape[:-1], 2 * k.shape[-1], dtype=k.dtype)[..., ::2]
    k_strided.copy_(k)
    assert k_strided.stride(-1) == 2
    out = variant.build(problem, **params)(q, k_strided, v)
    ref = reference_attention(q, k, v, problem.causal, problem.scale)
    bound = 2 * plain_error(problem, q, k, v, ref) + ATOL[F32]
    assert (out.double() - ref).abs().max().item() <= bound


@interpreter
def test_output_is_a_new_tensor():
    problem = Problem(1, 2, 2, 20, 30, 32, dtype=F32)
    q, k, v = _inputs(problem, _seed())
    run = _variant().build(problem, **_variant().default_params() | {"BLOCK_M": 32, "BLOCK_N": 32})
    first, second = run(q, k, v), run(q, k, v)
    assert first.data_ptr() != second.data_ptr()
    assert all(first.data_ptr() != t.data_ptr() for t in (q, k, v))
    assert torch.equal(first, second)


@interpreter
def test_supports_reasons(monkeypatch):
    variant = _variant()
    assert variant.supports(Problem(1, 2, 2, 16, 16, 64, dtype=F16)) is None
    assert "power of two" in variant.supports(Problem(1, 2, 2, 16, 16, 48))
    assert "power of two" in variant.supports(Problem(1, 2, 2, 16, 16, 512))
    assert "power of two" in variant.supports(Problem(1, 2, 2, 16, 16, 8))
    assert "float64" in variant.supports(Problem(1, 2, 2, 16, 16, 64, dtype=torch.float64))
    # No GPU is touched: the interpreter flag alone rules a CUDA problem out here.
    assert "interpreter" in variant.supports(Problem(1, 2, 2, 16, 16, 64, device="cuda"))
    assert "CUDA" in variant.supports(Problem(1, 2, 2, 16, 16, 64, device="meta"))
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert variant.supports(Problem(1, 2, 2, 16, 16, 64)) == (
        "Triton on the CPU needs TRITON_INTERPRET=1"
    )


def test_valid_reasons():
    variant = _variant()
    causal = Problem(1, 2, 2, 40, 70, 64, dtype=F16, causal=True)
    full = Problem(1, 2, 2, 40, 70, 64, dtype=F16)
    decode = Problem(1, 2, 2, 1, 70, 64, dtype=F16)
    base = variant.default_params()
    assert variant.valid(causal, base | {"BLOCK_M": 64}) is None
    assert variant.valid(full, base | {"causal_skip": False}) is None
    assert "causal_skip" in variant.valid(full, base)
    assert "tma" in variant.valid(causal, base | {"tma": True})
    assert "warp_specialize" in variant.valid(causal, base | {"warp_specialize": True})
    assert "interpreter" in variant.valid(causal, base | {"kv_eviction": "evict_last"})
    assert "BLOCK_M" in variant.valid(causal, base | {"BLOCK_M": 128})
    assert "BLOCK_N" in variant.valid(Problem(1, 2, 2, 40, 20, 64), base | {"BLOCK_N": 64})
    assert "BLOCK_M" in variant.valid(decode, base | {"BLOCK_M": 32, "causal_skip": False})
    assert variant.valid(decode, base | {"BLOCK_M": 16, "causal_skip": False}) is None
    # The smallest block always stays, however short the sequence.
    assert (
        variant.valid(
            Problem(1, 1, 1, 1, 1, 64), base | {"BLOCK_M": 16, "BLOCK_N": 16, "causal_skip": False}
        )
        is None
    )


def test_no_hopper_switch_survives_on_the_cpu():
    variant = _variant()
    problem = Problem(1, 2, 2, 200, 200, 64, dtype=F16, causal=True)
    names = list(variant.params)
    survivors = []
    for values in itertools.product(*variant.params.values()):
        params = dict(zip(names, values, strict=True))
        if variant.valid(problem, params) is None:
            survivors.append(params)
    assert survivors
    assert not any(p["tma"] or p["warp_specialize"] for p in survivors)
    assert {p["BLOCK_M"] for p in survivors} == {16, 32, 64, 128}


SUBPROCESS_SETUPS = {
    "triton is not installed": (
        "for name in ('triton', 'triton.language', 'triton.tools.tensor_descriptor'):\n"
        "    sys.modules[name] = None\n"
    ),
    "TRITON_INTERPRET=1 was set after triton was imported: set it before importing": (
        "import triton\nos.environ['TRITON_INTERPRET'] = '1'\n"
    ),
}


@pytest.mark.parametrize("reason", list(SUBPROCESS_SETUPS), ids=["no-triton", "late-interpret"])
def test_says_why_in_a_fresh_process(reason):
    """Imports cleanly without Triton; notices TRITON_INTERPRET set too late to take effect."""
    code = (
        "import os, sys\n" + SUBPROCESS_SETUPS[reason] + "import kernels\n"
        "from kernels import Problem\n"
        "v = kernels.variants()['triton_flash']\n"
        "print(v.supports(Problem(1, 2, 2, 16, 16, 64)))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("TRITON_INTERPRET", None)
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == reason


@interpreter
def test_rows_without_visible_keys_give_zeros_not_nan():
    """No problem has such rows (top-left causal always shows key 0); the guard holds anyway.

    The kernel is launched directly with seq_kv = 0, so every row of the block sees no key.
    """
    from kernels.builtin import triton_flash

    problem = Problem(1, 1, 1, 20, 16, 32, dtype=F32)
    q, k, v = _inputs(problem, _seed())
    out = torch.full_like(q, float("nan"))
    strides = (*q.stride(), *k.stride(), *v.stride(), *out.stride())
    triton_flash.flash_fwd[(1, 1)](
        q, k, v, out, *strides, 1, 1, problem.seq_q, 0, problem.scale,
        BLOCK_M=32, BLOCK_N=16, HEAD_DIM=32, CAUSAL=True, CAUSAL_SKIP=False, USE_EXP2=True,
        USE_TMA=False, WARP_SPECIALIZE=False, KV_EVICT="", KV_CACHE="", DOT_PRECISION="ieee",
        BF16_DOT_IN_FP32=False,
    )  # fmt: skip
    assert torch.equal(out, torch.zeros_like(out))


@triton.jit
def _bf16_cast(x_ptr, out_ptr, n: tl.constexpr):
    """One op: _bf16_nearest over n values."""
    offs = tl.arange(0, n)
    tl.store(out_ptr + offs, _bf16_nearest(tl.load(x_ptr + offs)))


@interpreter
def test_interpreter_bf16_rounding_matches_torch():
    """_bf16_nearest rounds float32 to bfloat16 exactly as torch (and the GPU) do.

    The interpreter's own cast truncates. Fresh values over 40 decades, exact halfway points
    (ties go to the even neighbour, up or down) and values that carry into the exponent.
    """
    gen = torch.Generator().manual_seed(_seed())
    ties = [1.0 + 2.0**-8, 1.0 + 3 * 2.0**-8, -(2.0 + 2.0**-7), -(2.0 + 3 * 2.0**-7)]
    carry = [1.9999999, -3.9999998, 255.99998]
    special = torch.tensor(ties + carry)
    fresh = torch.randn(1024 - len(special), generator=gen)
    fresh = fresh * torch.logspace(-20, 20, len(fresh))
    x = torch.cat([special, fresh]).float()
    out = torch.empty(1024, dtype=BF16)
    _bf16_cast[(1,)](x, out, 1024)
    assert torch.equal(out, x.to(BF16))
    truncated = x.view(torch.int32).bitwise_and(-65536).view(F32).to(BF16)
    assert not torch.equal(truncated, x.to(BF16))  # the inputs tell rounding from truncation


def _child_pytest(*args: str, interpret: bool, timeout: float) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("TRITON_INTERPRET", None)
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.timeout(1800)
def test_interpreter_cases_in_a_child_process():
    """Every `interpreter` test of this module, in one child pytest with TRITON_INTERPRET=1."""
    done = _child_pytest("-m", "interpreter", __file__, interpret=True, timeout=1700)
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    assert done.returncode == 0, done.stdout[-8000:] + done.stderr[-2000:]
    passed = re.search(r"(\d+) passed", summary)
    assert passed and int(passed.group(1)) >= len(CASES) + len(HOPPER_CASES) + 7, summary
    assert "skipped" not in summary, summary


PROBE = """
import os, subprocess, sys

def test_probe():
    assert "TRITON_INTERPRET" not in os.environ, os.environ["TRITON_INTERPRET"]
    code = "import os; print(os.environ.get('TRITON_INTERPRET', 'unset'))"
    seen = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout
    assert seen.strip() == "unset"
"""


def test_collecting_this_module_leaves_the_interpreter_off(tmp_path):
    """A pytest run that collects this module (as `make test` does) keeps TRITON_INTERPRET out
    of the later tests and of the processes they spawn."""
    probe = tmp_path / "test_zz_probe.py"
    probe.write_text(PROBE)
    done = _child_pytest(
        "--rootdir", str(ROOT), __file__, str(probe), "-k", "test_probe", interpret=False,
        timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "1 passed" in done.stdout, done.stdout[-2000:]
