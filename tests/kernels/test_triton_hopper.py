"""triton_flash compiled for sm_90 (H100/H200) on the CPU: the gene pool checked without a GPU.

`triton.compile(ASTSource(...), target=GPUTarget("cuda", 90, 32))` runs Triton's passes and
ptxas here (kernels/builtin/_triton_aot.py). The configurations are those a study searches on
an sm_90 GPU: space=triton and space=full (their union; the same triton_flash choices today),
kept by valid() as on an H100/H200, for the suite's problems (conf/problem/: small,
llama3_8b_prefill, long_hd128, decode) in float16 and bfloat16.

CI budget (what `make test` compiles): all of them are 10944 configurations on Triton 3.9 (3168
on 3.6), at 0.7-1 s of CPU per compile (`bench/hopper_compile.py` compiles them all and prints a
table; `--plan` counts them). Here, per problem and dtype, one kept configuration drawn at
random (a fresh seed per run, printed; HOPPER_COMPILE_SEED=N replays it; drawn among those whose
neighbours vary the most switches) and every kept configuration one switch away from it:
about 115 distinct compiles on 3.9: by that CPU figure 1-2 minutes on 2 idle cores (measured:
14 minutes wall on this project's shared 2-core machine at load 10-13). Every switch of every
problem is compared against its neighbours each run, and the draws move through the space from
run to run. Plus witnesses for valid()'s compile-based rejections (warp specialisation, the
load hints, the shared-memory bound), about 20 compiles, which must keep holding on the Triton
installed.

HOPPER_COMPILE_TRITON=DIR (a directory holding another Triton, e.g. the GPU image's 3.6:
`pip install --no-deps --target DIR triton==3.6.0`) also runs the sampled check against it, in a
subprocess (test_sampled_space_on_another_triton); without it that test is skipped.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("triton")
pytest.importorskip("triton.backends.nvidia")

import kernels  # noqa: E402
from kernels import Problem  # noqa: E402
from kernels.builtin import _triton_aot as aot  # noqa: E402
from kernels.builtin import triton_flash as tf  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
try:
    import hopper_compile as hc  # noqa: E402
finally:
    sys.path.remove(str(ROOT / "bench"))

if tf.KERNEL_INTERPRETED:
    pytest.skip("TRITON_INTERPRET=1: the kernel is not compiled here", allow_module_level=True)
pytestmark = pytest.mark.timeout(1800)  # compiles: minutes on 2 busy cores

SMALL = Problem(1, 8, 8, 512, 512, 64, dtype=torch.float16, device="cuda", name="small")
LLAMA = Problem(1, 32, 8, 4096, 4096, 128, dtype=torch.bfloat16, causal=True, device="cuda")
BASE = dict(
    BLOCK_M=64, BLOCK_N=64, num_warps=4, num_stages=2, exp2=True, causal_skip=False,
    kv_eviction="", kv_cache="", tma=False, warp_specialize=False,
)  # fmt: skip


def _seed() -> int:
    fixed = os.environ.get("HOPPER_COMPILE_SEED")
    return int(fixed) if fixed else int.from_bytes(os.urandom(4), "little") % (2**31)


@pytest.fixture(scope="module")
def sampled() -> tuple[list, dict, hc.Findings, dict[str, float]]:
    seed = _seed()
    print(f"HOPPER_COMPILE_SEED={seed}")
    return hc.run(hc.SUITE, hc.DTYPES, hc.SPACES, [], 1, seed, workers=2)


def _where(found: list) -> str:
    lines = [f"{c}: {hc._short(p)}{': ' + str(x) if x is not None else ''}" for c, p, x in found]
    return "\n".join(lines[:20])


def test_sample_covers_every_problem_dtype_and_switch(sampled):
    cases, _, _, timing = sampled
    assert [c.label for c, _ in cases] == [f"{p}/{d}" for p in hc.SUITE for d in hc.DTYPES]
    for case, configs in cases:
        assert len(configs) > 1, case.label  # a base and at least one neighbour
        for switch in case.choices:
            offered = {params[switch] for params in case.configs}
            tried = {params[switch] for params in configs}
            if len(offered) > 1:
                assert len(tried) > 1, f"{case.label}: {switch} not varied in the sample"
    print(
        f"{int(timing['compiles'])} compiles in {timing['wall_s']:.0f} s; one compile: median "
        f"{timing['median_s']:.2f} s, max {timing['max_s']:.2f} s"
    )


def test_every_configuration_compiles(sampled):
    _, _, found, _ = sampled
    assert not found.failed, _where(found.failed)


def test_shared_memory_fits_sm90(sampled):
    _, _, found, _ = sampled
    assert not found.shared, _where(found.shared)


def test_half_precision_dots_lower_to_wgmma(sampled):
    _, _, found, _ = sampled
    assert not found.no_wgmma, _where([(c, p, None) for c, p in found.no_wgmma])


def test_tma_produces_bulk_tensor_copies(sampled):
    _, _, found, _ = sampled
    assert not found.no_bulk, _where([(c, p, None) for c, p in found.no_bulk])


def test_every_tunable_changes_the_ptx(sampled):
    _, _, found, _ = sampled
    pairs = [
        (c, a, f"{s}={a[s]!r} and {s}={b[s]!r} give the same PTX") for c, s, a, b in found.labels
    ]
    assert not found.labels, _where(pairs)


# -- the machinery ---------------------------------------------------------------------------


def test_the_compiler_sees_the_launch_build_makes():
    """Triton's own binder specialises the meta-tensor launch as a GPU launch would: unit strides
    become constants, 16-aligned pointers and multiples of 16 get tt.divisibility."""
    src, options = aot.Compiler().source(SMALL, BASE)
    assert src.signature["Q"] == "*fp16" and src.signature["stride_qd"] == "constexpr"
    assert src.signature["stride_qm"] == "i32" and src.signature["qk_scale"] == "fp32"
    index = list(src.signature).index
    assert src.attrs[(index("Q"),)] == [["tt.divisibility", 16]]
    assert src.attrs[(index("stride_qm"),)] == [["tt.divisibility", 16]]
    assert options == {"num_warps": 4, "num_stages": 2}
    tma_src, _ = aot.Compiler().source(SMALL, BASE | {"tma": True})
    assert tma_src.signature["Q"].startswith("tensordesc<fp16[1, 1, 64, 64]")


def test_debug_line_info_is_no_difference():
    ptx = '.file 1 "a.py"\n\t.loc 1 2 3\n$L__tmp0:\n\tadd.s32 %r1, %r2, %r3; // x\n'
    other = ptx.replace("a.py", "b.py").replace(".loc 1 2 3", ".loc 1 9 9")
    assert aot.strip_debug(ptx) == aot.strip_debug(other) == "\tadd.s32 %r1, %r2, %r3;"
    assert aot.strip_debug(ptx + ".section\t.debug_info { }\n") == aot.strip_debug(ptx)


# -- witnesses: what valid() rejects because of what the compiler does -----------------------


def _compile(jobs: dict[str, aot.Job]) -> dict[str, aot.Compiled | str]:
    """A few compiles, in worker processes (a compiler abort must not take pytest down)."""
    return dict(zip(jobs, aot.compile_many(list(jobs.values()), workers=2), strict=True))


def test_warp_specialize_is_not_offered_where_it_fails_or_changes_nothing():
    """sm_90, Triton 3.6-3.9: the warp-specialisation pass asserts at num_warps=4 and leaves
    the code as it was at num_warps=8. If this starts failing, a Triton changed that: compile
    the space with it (bench/hopper_compile.py) and offer warp_specialize where it helps."""
    witnesses = _compile(
        {
            "ws@4": (SMALL, BASE | {"warp_specialize": True}),
            "nw8": (SMALL, BASE | {"num_warps": 8}),
            "ws@8": (SMALL, BASE | {"num_warps": 8, "warp_specialize": True}),
        }
    )
    assert isinstance(witnesses["ws@4"], str), "warp_specialize at num_warps=4 compiles now"
    assert witnesses["ws@8"].ptx == witnesses["nw8"].ptx, "warp_specialize changes the code now"
    assert kernels.variants()["triton_flash"].params["warp_specialize"] == [False]
    with aot.as_device():
        for warps in (4, 8):
            reason = tf.valid(SMALL, **BASE | {"num_warps": warps, "warp_specialize": True})
            assert reason and "warp_specialize" in reason


def test_load_hints_are_offered_only_where_they_change_the_code():
    """Each kv_eviction/kv_cache value: offered (in the params and kept by valid()) exactly when
    its PTX differs from the same launch without it and it compiles."""
    jobs: dict[str, aot.Job] = {"base": (SMALL, BASE)}
    for value in tf.KNOWN_KV_EVICTION[1:]:
        jobs[f"kv_eviction={value}"] = (SMALL, BASE | {"kv_eviction": value})
    for value in tf.KNOWN_KV_CACHE[1:]:
        jobs[f"kv_cache={value}"] = (SMALL, BASE | {"kv_cache": value})
    witnesses = _compile(jobs)
    base = witnesses["base"].ptx
    for switch, known in (("kv_eviction", tf.KNOWN_KV_EVICTION), ("kv_cache", tf.KNOWN_KV_CACHE)):
        for value in known[1:]:
            got = witnesses[f"{switch}={value}"]
            changes = isinstance(got, aot.Compiled) and got.ptx != base
            with aot.as_device():
                kept = tf.valid(SMALL, **BASE | {switch: value}) is None
            offered = value in kernels.variants()["triton_flash"].params[switch] and kept
            assert offered == changes, f"{switch}={value!r}: offered {offered}, changes {changes}"


def _shared_edge(problem: Problem) -> dict[str, dict[str, Any]]:
    """Per tile shape with any configuration over the limit: the largest valid() keeps and the
    smallest it rejects for shared memory (by its own estimate)."""
    edge: dict[str, dict[str, Any]] = {}
    gpu = aot.on_gpu(problem)
    with aot.as_device():
        for tma in (False, True):
            for block_m in tf.BLOCK_M_CHOICES:
                rows = []
                for block_n in tf.BLOCK_N_CHOICES:
                    for stages in (2, 3, 4):
                        p = BASE | {"BLOCK_M": block_m, "BLOCK_N": block_n, "num_stages": stages}
                        p |= {"tma": tma, "causal_skip": True}
                        rows.append((tf.shared_bytes(gpu, p), tf.valid(gpu, **p), p))
                kept = [r for r in rows if r[1] is None]
                over = [r for r in rows if r[1] and "shared memory" in r[1]]
                if kept and over:
                    edge[f"kept BM{block_m} tma={tma}"] = max(kept, key=lambda r: r[0])[2]
                    edge[f"over BM{block_m} tma={tma}"] = min(over, key=lambda r: r[0])[2]
    return edge


def test_shared_memory_estimate_bounds_the_compiler_and_valid_rejects_what_exceeds():
    """valid()'s estimate is never below what the compiler allocates; where it rejects a
    configuration for shared memory, the compiler would indeed ask for more than sm_90 has."""
    edge = _shared_edge(LLAMA)
    assert any(n.startswith("over ") for n in edge), "no configuration was over the limit"
    witnesses = _compile({name: (LLAMA, params) for name, params in edge.items()})
    gpu = aot.on_gpu(LLAMA)
    for name, params in edge.items():
        got = witnesses[name]
        assert isinstance(got, aot.Compiled), f"{name}: {got}"
        assert tf.shared_bytes(gpu, params) >= got.shared, f"{name}: estimate below {got.shared}"
        if name.startswith("over "):
            assert got.shared > aot.SM90.shared_per_block, f"{name}: fits ({got.shared} B)"
        else:
            assert got.shared <= aot.SM90.shared_per_block, f"{name}: {got.shared} B"


# -- the GPU image's Triton, and the script ---------------------------------------------------


def test_sampled_space_on_another_triton():
    """The same sampled check with the Triton in HOPPER_COMPILE_TRITON (skipped without it)."""
    other = os.environ.get("HOPPER_COMPILE_TRITON")
    if not other:
        pytest.skip("HOPPER_COMPILE_TRITON names no directory with another Triton (e.g. 3.6)")
    seed = random.Random(_seed()).randrange(2**31)
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "hopper_compile.py"), "--triton", other,
         "--sample", "1", "--seed", str(seed)],
        capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert "All checks pass." in done.stdout


def test_script_says_what_is_wrong_in_one_line():
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "hopper_compile.py"), "--problems", "nosuch"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "nosuch" in done.stderr


def test_cache_all_is_not_offered_where_the_loads_are_narrower_than_16_bytes():
    """A 16x64 half-precision K tile over 8 warps is 8 bytes a thread: cp.async.ca already
    (cp.async.cg moves 16 bytes only), so kv_cache='.ca' is a label there; at 4 warps (16 bytes
    a thread) the default is .cg and '.ca' changes the code. Found by the sampled check."""
    narrow = BASE | {"BLOCK_N": 16, "num_warps": 8, "num_stages": 4}
    wide = BASE | {"BLOCK_N": 16, "num_warps": 4, "num_stages": 4}
    got = _compile(
        {
            "narrow": (SMALL, narrow),
            "narrow .ca": (SMALL, narrow | {"kv_cache": ".ca"}),
            "wide": (SMALL, wide),
            "wide .ca": (SMALL, wide | {"kv_cache": ".ca"}),
        }
    )
    assert "cp.async.ca" in got["narrow"].ptx and "cp.async.cg" in got["wide"].ptx
    assert got["narrow .ca"].ptx == got["narrow"].ptx
    assert got["wide .ca"].ptx != got["wide"].ptx
    with aot.as_device():
        assert "under 16 bytes a thread" in (tf.valid(SMALL, **narrow | {"kv_cache": ".ca"}) or "")
        if ".ca" in tf.KV_CACHE:  # offered at all on this Triton (3.9+)
            assert tf.valid(SMALL, **wide | {"kv_cache": ".ca"}) is None


def test_kept_results_let_a_killed_full_run_go_on(tmp_path, monkeypatch):
    """bench/hopper_compile.py --keep: what one run compiled, the next takes as it is; a line a
    killed run left unfinished is compiled again, and the checks read stored results as fresh."""
    case = hc.space_case("small", "float16", ["triton"], [])
    configs = case.configs[:2]
    keep = tmp_path / "kept.jsonl"
    first, timing = hc.compile_cases([(case, configs)], workers=2, keep=keep)
    assert timing["stored"] == 0 and timing["compiles"] == 2
    lines = keep.read_text().splitlines()
    assert len(lines) == 2
    keep.write_text(lines[0] + "\n" + lines[1][:15])  # killed while writing the second
    _, timing = hc.compile_cases([(case, configs)], workers=2, keep=keep)
    assert timing["stored"] == 1

    def no_compiles(jobs, **kwargs):
        assert not jobs, f"compiled {len(jobs)} stored configurations again"
        return []

    monkeypatch.setattr(aot, "compile_many", no_compiles)
    third, timing = hc.compile_cases([(case, configs)], workers=2, keep=keep)
    assert timing["stored"] == 2
    for key, fresh in first.items():
        assert isinstance(third[key], hc.Kept)
        assert (third[key].digest, third[key].shared) == (fresh.digest, fresh.shared)
        assert (third[key].wgmma, third[key].bulk_tensor) == (fresh.wgmma, fresh.bulk_tensor)
    assert hc.check([(case, configs)], third) == hc.check([(case, configs)], first)
