"""Shared test helpers: real subprocesses, real SQLite files, fresh random inputs."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import optuna
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
HAS_GPU = torch.cuda.is_available()
# TRITON_INTERPRET is not set here: the tests that need Triton's interpreter are marked
# `interpreter` and run in one child pytest that has the flag from its start
# (tests/kernels/test_triton_flash.py), so no other test or worker inherits it, and the sm_90
# compile check (tests/kernels/test_triton_hopper.py) compiles real kernels in this process.
GPU_SKIP = "needs a CUDA GPU; none is visible"

# A CPU problem small enough that a study of a few trials takes seconds.
TINY = [
    "problem=small_cpu",
    "problem.heads_q=2",
    "problem.heads_kv=2",
    "problem.seq_q=64",
    "problem.seq_kv=64",
    "problem.head_dim=32",
    "bench=quick",
    "study.retime_top_k=2",
]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # interpreter tests run in a child pytest (tests/kernels/test_triton_flash.py)
    if os.environ.get("TRITON_INTERPRET") != "1":
        interpreted = [item for item in items if item.get_closest_marker("interpreter")]
        if interpreted:
            config.hook.pytest_deselected(items=interpreted)
            items[:] = [item for item in items if not item.get_closest_marker("interpreter")]
    if HAS_GPU:
        return
    skip = pytest.mark.skip(reason=GPU_SKIP)
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """One line naming every test skipped for a missing real component (a browser, a database
    server, ...) and how to enable it: such a skip must not pass silently as a green run. GPU
    skips are expected on a CPU machine and only counted."""
    skipped = terminalreporter.stats.get("skipped", [])
    missing, gpu = [], 0
    for report in skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        reason = reason.removeprefix("Skipped: ")
        if reason == GPU_SKIP:
            gpu += 1
        else:
            missing.append(f"{report.nodeid} ({reason})")
    if missing:
        terminalreporter.write_line(
            f"skipped real-component tests ({len(missing)}): " + "; ".join(missing)
        )
    if gpu:
        terminalreporter.write_line(f"skipped GPU tests: {gpu} (no CUDA GPU visible)")


def chunk_plugin(name: str) -> str:
    """A user's plugin as README.md shows one: query-chunked plain attention, GQA by repeat, with
    the chunk as its tunable (16 or 32). Honest: the gate must accept it."""
    return textwrap.dedent(f"""
        import torch
        from kernels import register

        @register("{name}", params={{"chunk": [16, 32]}})
        def build_{name}(problem, chunk):
            def run(q, k, v):
                k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
                v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
                out = torch.empty_like(q)
                for s in range(0, q.shape[2], chunk):
                    w = (q[:, :, s:s + chunk] @ k.transpose(-1, -2)) * problem.scale
                    out[:, :, s:s + chunk] = torch.softmax(w.float(), -1).to(q.dtype) @ v
                return out
            return run
    """)


def run_study(cwd: Path, *overrides: str, timeout: float = 300, module: str = "study.run"):
    """`python -m study.run ...` in `cwd` (its own outputs/ and SQLite file)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run(
        [sys.executable, "-m", module, *overrides],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def load_only_study(cwd: Path) -> optuna.Study:
    url = f"sqlite:///{cwd / 'outputs' / 'studies.db'}"
    summaries = optuna.get_all_study_summaries(url)
    assert len(summaries) == 1, [s.study_name for s in summaries]
    return optuna.load_study(study_name=summaries[0].study_name, storage=url)


@pytest.fixture
def fresh_seed(request: pytest.FixtureRequest) -> int:
    """A different seed per test run: inputs are fresh, failures print the seed to reproduce."""
    seed = int.from_bytes(os.urandom(4), "little") % (2**31)
    print(f"seed={seed}")
    return seed
