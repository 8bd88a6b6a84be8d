"""`python -m study.selfcheck` on the CPU: exit 0, one row per variant and applicable mutation,
exact statuses."""

from __future__ import annotations

import dataclasses
import re
from importlib.util import find_spec
from itertools import product
from pathlib import Path

import pytest

import kernels
from kernels import Problem
from study import selfcheck
from tests.conftest import run_study

# Small enough for the CPU; seq 96 leaves chunk=64 valid for the chunked variants.
OVERRIDES = [
    "device=cpu",
    "problem=small_cpu",
    "problem.heads_q=4",
    "problem.heads_kv=2",  # GQA: every built-in CPU variant applies (grouped needs it)
    "problem.seq_q=96",
    "problem.seq_kv=96",
    "problem.head_dim=16",
    # flex compiles its CPU template for about a minute per layout (tests/kernels/test_compiled.py)
    "space.exclude=[flex]",
]
PROBLEM = Problem(batch=1, heads_q=4, heads_kv=2, seq_q=96, seq_kv=96, head_dim=16, dtype="float32")
CUDA_ONLY = {"sdpa_cudnn", "sdpa_efficient"}


def parse(stdout: str) -> dict[tuple[str, str], str]:
    """(variant, mutation) -> status, from the printed table."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("variant "))
    rows = {}
    for line in lines[start + 2 :]:
        if not line.strip() or line.startswith("selfcheck"):
            break
        cells = re.split(r"\s{2,}", line.strip())
        rows[(cells[0], cells[1])] = cells[2]
    return rows


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_selfcheck_on_the_cpu(tmp_path: Path) -> None:
    proc = run_study(tmp_path, *OVERRIDES, module="study.selfcheck", timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "selfcheck passed" in proc.stdout
    rows = parse(proc.stdout)
    registry = kernels.variants()
    expected: dict[tuple[str, str], str] = {}
    for name, variant in registry.items():
        if name == "flex" or not variant.source.startswith("kernels."):
            continue
        if name in CUDA_ONLY or ("triton" in variant.tags and find_spec("triton") is None):
            expected[(name, "-")] = "n/a"
            continue
        here = selfcheck._shrunk(PROBLEM) if "triton" in variant.tags else PROBLEM
        for row in selfcheck.plan(variant, here):
            expected[(name, row.label)] = "ok"  # every row runs, reused outputs included
    assert rows == expected
    # the mutations that apply on the CPU all show up, the GPU-only ones do not
    labels = {label for _, label in rows}
    assert {"layout=bshd", "layout=bshd_contiguous", "threads=1", "out=prealloc"} <= labels
    assert not {"graph=on", "l2=kv"} & labels
    # speedups are against the fastest SDPA backend of this run: one SDPA row is at 1.000x
    sdpa_lines = [ln for ln in proc.stdout.splitlines() if re.match(r"sdpa\w*\s+-\s+ok", ln)]
    assert any("1.000x" in ln for ln in sdpa_lines), sdpa_lines


def test_representative_params_and_failures() -> None:
    registry = kernels.variants()
    assert selfcheck.representative_params(registry["plain"], PROBLEM) == {}
    small = Problem(batch=1, heads_q=2, heads_kv=2, seq_q=64, seq_kv=64, head_dim=16)
    assert selfcheck.representative_params(registry["chunked"], small) is None
    assert selfcheck.representative_params(registry["chunked"], PROBLEM) == {"chunk": 64}
    assert selfcheck.Row("plain", "-", "PRUNED(tolerance)").failed
    assert selfcheck.Row("plain", "-", "FAIL").failed
    assert not selfcheck.Row("mine", "-", "FAIL", builtin=False).failed
    assert not selfcheck.Row("plain", "-", "n/a").failed
    gpu_rows = {
        label for label, _ in selfcheck.mutation_rows(registry["sdpa"], small.with_device("cuda"))
    }
    assert {"graph=on", "l2=kv"} <= gpu_rows or "l2=kv" not in gpu_rows  # l2 needs cuda-python
    assert "graph=on" in gpu_rows and "threads=1" not in gpu_rows and "out=prealloc" not in gpu_rows


# -- the row plan: which rows a GPU selfcheck runs (computed here, without a GPU) -----------------
GPU_PROBLEM = Problem(
    batch=1, heads_q=8, heads_kv=2, seq_q=512, seq_kv=512, head_dim=64, dtype="float16",
    causal=True, device="cuda",
)  # fmt: skip


class _Bindings:
    """cuda-python "importable": l2=kv applies (its calls are not made by the plan)."""


@pytest.fixture
def hopper(monkeypatch: pytest.MonkeyPatch) -> None:
    """valid() of triton_flash asks the GPU what it is: stand in an H200 (9.0, 232,448 bytes of
    shared memory per block), and make l2=kv's bindings importable."""
    from kernels import mutations
    from kernels.builtin import triton_flash

    if hasattr(triton_flash, "device_facts"):  # capability and shared memory per block
        facts = triton_flash.DeviceFacts((9, 0), 232_448)
        monkeypatch.setattr(triton_flash, "device_facts", lambda device: facts)
    else:
        monkeypatch.setattr(triton_flash, "_capability", lambda device: (9, 0))
    monkeypatch.setattr(mutations, "cudart", lambda: _Bindings())


def _valid_combinations(variant: kernels.Variant, problem: Problem) -> list[dict]:
    names = list(variant.params)
    combos = [dict(zip(names, values, strict=True)) for values in product(*variant.params.values())]
    return [c for c in combos if variant.valid(problem, c) is None]


@pytest.mark.parametrize("name", ["triton_flash", "flex", "compiled_chunked", "compiled_plain"])
def test_gpu_plan_runs_every_value_of_every_tunable(name: str, hopper: None) -> None:
    """One row per other value of each tunable that has a valid combination, with as few other
    tunables moved from the representative as valid() allows; then the mutations; nothing
    twice."""
    variant = kernels.variants()[name]
    rows = selfcheck.plan(variant, GPU_PROBLEM)
    assert rows is not None
    base = selfcheck.representative_params(variant, GPU_PROBLEM)
    valid = _valid_combinations(variant, GPU_PROBLEM)
    assert base == valid[0]
    tunable = {r.label: r for r in rows if r.stage == 1}
    expected = set()
    for param, choices in variant.params.items():
        for value in choices:
            with_value = [c for c in valid if c[param] == value]
            if value == base[param] or not with_value:
                continue
            expected.add(f"{param}={value}")
            row = tunable[f"{param}={value}"]
            assert row.params in valid and row.params[param] == value and row.mutations == {}
            moved = sum(row.params[p] != base[p] for p in base)
            assert moved == min(sum(c[p] != base[p] for p in base) for c in with_value)
    assert set(tunable) == expected
    assert [r.label for r in rows if r.stage == 0][0] == "-"
    labels = [r.label for r in rows]
    assert len(labels) == len(set(labels))


def test_gpu_plan_lists_the_risky_switches(hopper: None) -> None:
    registry = kernels.variants()
    triton_rows = {r.label: r for r in selfcheck.plan(registry["triton_flash"], GPU_PROBLEM)}
    for label in ("tma=True", "num_warps=8", "num_stages=3"):
        assert label in triton_rows, sorted(triton_rows)
    # not offered on sm_90: it fails at 4 warps and changes nothing at 8 (triton_flash.py)
    assert "warp_specialize=True" not in triton_rows
    assert triton_rows["tma=True"].params["kv_eviction"] == ""  # hints do not apply to TMA loads
    flex_rows = {r.label: r for r in selfcheck.plan(registry["flex"], GPU_PROBLEM)}
    assert flex_rows["BLOCK_M=128"].params["BLOCK_N"] is not None  # flex pairs the tiles
    compiled = selfcheck.plan(registry["compiled_plain"], GPU_PROBLEM)
    assert [(r.label, r.params, r.mutations, r.scored) for r in compiled] == [
        ("-", {"mode": "default"}, {}, True),
        ("layout=bshd", {"mode": "default"}, {"layout": "bshd"}, True),
        ("layout=bshd_contiguous", {"mode": "default"}, {"layout": "bshd_contiguous"}, True),
        ("out=prealloc", {"mode": "default"}, {"out": "prealloc"}, True),
        ("graph=on", {"mode": "default"}, {"graph": "on"}, True),
        ("l2=kv", {"mode": "default"}, {"l2": "kv"}, True),
        ("mode=max-autotune-no-cudagraphs", {"mode": "max-autotune-no-cudagraphs"}, {}, True),
        ("mode=reduce-overhead", {"mode": "reduce-overhead"}, {}, True),
        (
            "unverified: graph=on with mode=reduce-overhead",
            {"mode": "reduce-overhead"},
            {"graph": "on"},
            False,
        ),
        (
            "unverified: graph=on with l2=kv",
            {"mode": "default"},
            {"graph": "on", "l2": "kv"},
            False,
        ),
    ]
    # on the CPU: the representative and the mutations only
    cpu = dataclasses.replace(GPU_PROBLEM, device="cpu", dtype="float32")
    assert [r.label for r in selfcheck.plan(registry["compiled_plain"], cpu)] == [
        label for label, _ in selfcheck.mutation_rows(registry["compiled_plain"], cpu)
    ]


class RecordingWorker:
    """Answers the selfcheck's requests from a table instead of measuring (the order of the
    requests and their limits are what is checked here)."""

    def __init__(self, fail: set[str]) -> None:
        self.fail = fail
        self.calls: list[tuple[str, str, float]] = []

    def call(self, kind: str, payload: dict, timeout_s: float) -> dict:
        if kind == "supports":
            return {"status": "ok", "answers": dict.fromkeys(payload["names"])}
        label = payload["label"].removeprefix("selfcheck ")
        self.calls.append((label.split(" ", 1)[0], label.split(" ", 1)[1], timeout_s))
        if label in self.fail:
            return {"status": "error", "error": "RuntimeError: boom"}
        return {"status": "ok", "latency_us": 10.0, "tflops": 1.0, "speedup": 1.0}


def test_check_runs_every_variant_once_before_the_extra_rows(hopper: None) -> None:
    """A run cut short (gpu_run's step limit) has checked every variant's representative and
    mutation rows; the tunables come next, the unverified combinations last, unscored; the
    table lists rows by variant; compile-tagged variants get the build budget on top."""
    worker = RecordingWorker(fail={"compiled_plain unverified: graph=on with l2=kv"})
    names = ["compiled_plain", "sdpa"]
    rows = selfcheck.check(
        GPU_PROBLEM, {}, names, worker, timeout_s=100.0, echo=False, build_timeout_s=600.0
    )

    def stage(label: str) -> int:
        return 2 if label.startswith("unverified") else 1 if label.startswith("mode=") else 0

    called = [(variant, label) for variant, label, _ in worker.calls]
    assert [stage(label) for _, label in called] == sorted(stage(label) for _, label in called)
    assert called[-3:] == [
        ("compiled_plain", "unverified: graph=on with mode=reduce-overhead"),
        ("compiled_plain", "unverified: graph=on with l2=kv"),
        ("sdpa", "unverified: graph=on with l2=kv"),
    ]
    assert sorted(called) == sorted((r.variant, r.mutation) for r in rows)
    limits = {variant: timeout for variant, _, timeout in worker.calls}
    assert limits == {"compiled_plain": 700.0, "sdpa": 100.0}
    assert [r.variant for r in rows] == sorted((r.variant for r in rows), key=names.index)
    failed = [(r.variant, r.mutation) for r in rows if r.status == "FAIL"]
    assert failed == [("compiled_plain", "unverified: graph=on with l2=kv")]
    assert not any(r.failed for r in rows)  # an unverified row is reported, not scored
    assert selfcheck.Row("x", "-", "FAIL", scored=True).failed
