"""bench/gpu_run.py: the plan of a first GPU run resolves on the CPU, and its steps are contained.

The dry run runs here in full but for the wheel check, which needs the carried wheels (a
directory made by ../shared/tools/gpu-wheels.sh, which needs a package index): it runs where
GPU_RUN_WHEELS names such a directory or `.whl` exists in the repository, and is skipped,
saying so, elsewhere (CI).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
try:
    import gpu_run  # noqa: E402
finally:
    sys.path.remove(str(ROOT / "bench"))


def _dry_run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu_run.py"), "--dry-run", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_dry_run_resolves_every_step(tmp_path):
    done = _dry_run("--wheels", str(tmp_path / "none"))
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
    lines = done.stdout.splitlines()
    steps = [line for line in lines if line.startswith(("  ok ", "FAIL "))]
    names = ["versions", "sdpa baseline", "selfcheck", "gpu tests"]
    names += [f"study {p}" for p in gpu_run.SUITE]
    assert [s.split(" (")[0].split(maxsplit=1)[1] for s in steps] == names
    assert all(s.startswith("  ok ") for s in steps), done.stdout
    assert any(line.startswith("skip wheels") for line in lines)
    assert lines[-1] == "dry run: ok"


def test_limits_fit_the_budget():
    steps = gpu_run.plan(gpu_run.SUITE, Path("/nonexistent"), Path("/tmp/x"))
    assert sum(s.timeout_s for s in steps) + 40 <= gpu_run.BUDGET_S <= 8 * 60
    assert all(s.timeout_s >= 15 for s in steps)


def test_a_broken_step_is_caught(tmp_path):
    step = gpu_run.Step(
        "broken",
        [sys.executable, "bench/nosuch.py"],
        5,
        files=("bench/nosuch.py",),
        modules=("no_such_module_here",),
        overrides=("problem=nosuch",),
        collect=("-m", "no_such_marker", str(tmp_path)),
    )
    problems = gpu_run.check_step(step)
    assert len(problems) == 4, problems
    assert "bench/nosuch.py: no such file" in problems
    assert any("no_such_module_here" in p for p in problems)
    assert any(p.startswith("config:") and "nosuch" in p for p in problems)
    assert any("collects nothing" in p for p in problems)


def test_a_hanging_step_is_killed_with_what_it_started(tmp_path):
    """One hang costs one step: the step's whole process group goes at its limit."""
    pid_file = tmp_path / "grandchild.pid"
    code = (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
        f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
        "print('started', flush=True)\n"
        "time.sleep(600)\n"
    )
    start = time.monotonic()
    outcome = gpu_run.run_step(gpu_run.Step("hang", [sys.executable, "-c", code], 3))
    assert outcome.timed_out and time.monotonic() - start < 20
    assert outcome.output == ["started"]
    grandchild = int(pid_file.read_text())
    for _ in range(50):
        try:
            os.kill(grandchild, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"the step's child {grandchild} outlived the step")


def test_the_report_names_every_step_and_its_fate(tmp_path):
    steps = [gpu_run.Step(n, [sys.executable, "-c", c], 5) for n, c in (("a", "print(1)"),
             ("b", "raise SystemExit(3)"), ("c", "print(2)"))]  # fmt: skip
    outcomes = [gpu_run.run_step(steps[0]), gpu_run.run_step(steps[1]), gpu_run.Outcome(steps[2])]
    text = gpu_run.render(outcomes, "today")
    assert "| a | ok |" in text and "| b | exit 3 |" in text and "| c | not run |" in text
    assert "## a" in text and "## c" not in text


def _wheels() -> Path | None:
    named = os.environ.get("GPU_RUN_WHEELS")
    if named:
        return Path(named)
    here = ROOT / ".whl"
    return here if here.is_dir() and any(here.glob("*.whl")) else None


def test_the_carried_wheels_install_and_meet_their_requirements(tmp_path):
    wheels = _wheels()
    if wheels is None:
        pytest.skip("no wheel directory (GPU_RUN_WHEELS or .whl; ../shared/tools/gpu-wheels.sh)")
    assert gpu_run.check_wheels(wheels) == []
    # One wheel fewer: what needed it is named.
    partial = tmp_path / "partial"
    partial.mkdir()
    dropped = next(
        w for w in sorted(wheels.glob("*.whl")) if w.name.lower().startswith("sqlalchemy")
    )
    for wheel in wheels.glob("*.whl"):
        if wheel != dropped:
            shutil.copy(wheel, partial)
    problems = gpu_run.check_wheels(partial)
    assert any("sqlalchemy" in p for p in problems), problems


def test_unknown_problem_is_one_line_and_exit_2():
    done = _dry_run("--problems", "small,nosuch")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == ["error: unknown problem(s) nosuch (conf/problem/)"]
