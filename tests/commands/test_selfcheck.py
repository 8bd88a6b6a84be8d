"""`python -m study.selfcheck` on the CPU: exit 0, one row per variant and applicable mutation,
exact statuses."""

from __future__ import annotations

import re
from importlib.util import find_spec
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
        for label, _ in selfcheck.mutation_rows(variant, here):
            expected[(name, label)] = "ok"  # every row runs, reused outputs included
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
