"""A first GPU run in one command: each step under its own time limit, everything into one file.

    python3 bench/gpu_run.py [--wheels .whl] [--out FILE.md] [--problems small,decode,...]
                             [--skip step,...] [--dry-run]

Steps, in order (the limits add up to under 8 minutes on one H200): install the carried wheels
(`--wheels`, made here by `../shared/tools/gpu-wheels.sh .whl`: the GPU image has torch and
Triton but not Optuna or Hydra, and no package index) into a scratch target put first on
PYTHONPATH; print the versions (Python, torch, CUDA, Triton, cuda-bindings, the GPU and its
driver); bench/gpu_baseline.py on the suite; `python -m study.selfcheck`; the GPU-marked tests
(`pytest -m gpu`); one short study per suite problem (few trials, its own SQLite file). A step that
hangs is killed at its limit, with everything it started (its own process group), and the run goes
on: one hang costs one step. The file (default docs/gpu-runs/<date>-<gpu>.md) is rewritten after
each step, so a run cut short still leaves what it measured.

`--dry-run` checks the plan on a CPU, in well under a minute: every step's files exist, its
modules import, the Hydra overrides of selfcheck and of each study compose and validate, the GPU
tests collect, the limits fit the budget, and the wheels install into a scratch target for the
GPU machine's Python (3.12, manylinux x86-64) with every requirement met by another carried wheel
or by the image (bench/gpu_image_packages.txt). Without a wheel directory that check is skipped
and said so (CI has none; building one needs a package index). Exit status 1 if a check fails.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SUITE = ["small", "llama3_8b_prefill", "long_hd128", "decode"]
BUDGET_S = 480  # the whole run, first wheel to last study
SITE = Path(tempfile.gettempdir()) / "gpu-run-site"
IMAGE_PACKAGES = ROOT / "bench" / "gpu_image_packages.txt"
# Needed by the project but neither in the image nor carried, and fine to miss on the GPU run.
OPTIONAL_THERE = {"plotly": "study.run skips plots.html without it"}
GPU_PYTHON = {"version": "3.12", "full": "3.12.3"}
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "any"]
TAIL_LINES = 120

VERSIONS = """
import platform, subprocess, shutil
print("python", platform.python_version(), platform.machine())
import torch
cudnn = torch.backends.cudnn.version()
print("torch", torch.__version__, "| CUDA", torch.version.cuda, "| cuDNN", cudnn)
for name in ("triton", "cuda.bindings", "optuna", "hydra", "numpy"):
    try:
        module = __import__(name, fromlist=["_"])
        print(name, getattr(module, "__version__", "?"))
    except Exception as exc:
        print(name, "missing:", type(exc).__name__, exc)
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("gpu", p.name, f"sm_{p.major}{p.minor}", p.multi_processor_count, "SMs",
          round(p.total_memory / 2**30), "GiB")
else:
    print("gpu: none visible to torch")
if shutil.which("nvidia-smi"):
    query = "--query-gpu=name,driver_version,memory.total,clocks.max.sm"
    smi = subprocess.run(["nvidia-smi", query, "--format=csv"], capture_output=True, text=True)
    print(smi.stdout)
"""


@dataclass
class Step:
    """One command of the run and what the dry run checks of it."""

    name: str
    argv: list[str]
    timeout_s: int
    cwd: Path = ROOT
    files: tuple[str, ...] = ()  # relative to the repository; must exist
    modules: tuple[str, ...] = ()  # must import
    overrides: tuple[str, ...] | None = None  # Hydra overrides that must compose and validate
    collect: tuple[str, ...] | None = None  # pytest arguments that must collect >= 1 test


@dataclass
class Outcome:
    step: Step
    rc: int | None = None  # None: not run
    wall_s: float = 0.0
    timed_out: bool = False
    output: list[str] = field(default_factory=list)


def plan(problems: list[str], wheels: Path, workdir: Path) -> list[Step]:
    """The run's steps; their limits add up to BUDGET_S at most (the dry run checks it)."""
    py = sys.executable
    wheel_files = sorted(str(p) for p in wheels.glob("*.whl")) if wheels.is_dir() else []
    steps = [
        Step(
            "install wheels",
            [
                py,
                "-m",
                "pip",
                "install",
                "-q",
                "--no-index",
                "--no-deps",
                "--no-compile",
                "--no-cache-dir",
                "--upgrade",
                "--target",
                str(SITE),
                *wheel_files,
            ],
            40,
            modules=("pip",),
        ),  # fmt: skip
        Step("versions", [py, "-c", VERSIONS], 20, modules=("torch",)),
        Step(
            "sdpa baseline",
            [py, "bench/gpu_baseline.py", "--reps", "20", "--problems", ",".join(problems)],
            75,
            files=("bench/gpu_baseline.py",),
            modules=("torch",),
        ),
        Step(
            "selfcheck",
            [py, "-m", "study.selfcheck", "device=cuda", "problem=small", "space=full"],
            105,
            modules=("study.selfcheck",),
            overrides=("device=cuda", "problem=small", "space=full", "bench=quick"),
        ),
        Step(
            "gpu tests",
            [py, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "tests"],
            70,
            files=("tests",),
            modules=("pytest",),
            collect=("-m", "gpu", "tests"),
        ),
    ]
    per_study = (BUDGET_S - sum(s.timeout_s for s in steps)) // max(1, len(problems))
    for name in problems:
        overrides = (
            f"problem={name}",
            "space=full",
            "device=cuda",
            "bench=quick",
            "study.n_trials=6",
            f"study.timeout_s={max(5, per_study - 15)}",  # stop starting trials; then retime
            "study.retime_top_k=1",
            f"worker.timeout_s={max(10, per_study - 10)}",
            f"storage.url=sqlite:///{workdir / 'studies.db'}",
        )
        steps.append(
            Step(
                f"study {name}",
                [py, "-m", "study.run", *overrides],
                per_study,
                cwd=workdir,
                modules=("study.run",),
                overrides=overrides,
            )
        )
    if not wheel_files:
        steps = steps[1:]
    return steps


def step_env() -> dict[str, str]:
    """The carried wheels first, then the repository (conf/ is a package there)."""
    paths = [str(SITE)] if SITE.is_dir() else []
    paths += [str(ROOT), os.environ.get("PYTHONPATH", "")]
    return dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in paths if p), PYTHONUNBUFFERED="1")


def run_step(step: Step) -> Outcome:
    """Run one step in its own process group, echoing its output; kill the group at the limit."""
    outcome = Outcome(step)
    start = time.monotonic()
    proc = subprocess.Popen(
        step.argv,
        cwd=step.cwd,
        env=step_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        start_new_session=True,
    )

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            print(line, end="", flush=True)
            outcome.output.append(line.rstrip("\n"))

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        outcome.rc = proc.wait(timeout=step.timeout_s)
    except subprocess.TimeoutExpired:
        outcome.timed_out = True
        for sig, grace in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=grace)
                break
            except subprocess.TimeoutExpired:
                continue
        outcome.rc = proc.returncode
    reader.join(timeout=5)
    outcome.wall_s = time.monotonic() - start
    return outcome


def gpu_slug() -> str:
    """'h200' from nvidia-smi's 'NVIDIA H200'; 'gpu' where it cannot say."""
    if shutil.which("nvidia-smi"):
        done = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        name = done.stdout.strip().splitlines()[0] if done.stdout.strip() else ""
        slug = re.sub(r"[^a-z0-9]+", "-", name.lower().replace("nvidia", "")).strip("-")
        if slug:
            return slug
    return "gpu"


def render(outcomes: list[Outcome], started: str) -> str:
    lines = [
        f"# GPU run {started}",
        "",
        "`python3 bench/gpu_run.py` (bench/gpu_run.py says what each step is). Wall times include",
        "process start; a step killed at its limit shows what it printed until then.",
        "",
        "| step | status | wall s | limit s |",
        "|---|---|---|---|",
    ]
    for o in outcomes:
        if o.rc is None:
            status = "not run"
        elif o.timed_out:
            status = "TIMEOUT (killed)"
        else:
            status = "ok" if o.rc == 0 else f"exit {o.rc}"
        lines.append(f"| {o.step.name} | {status} | {o.wall_s:.0f} | {o.step.timeout_s} |")
    for o in outcomes:
        if o.rc is None:
            continue
        shown = o.output[-TAIL_LINES:]
        cut = len(o.output) - len(shown)
        lines += ["", f"## {o.step.name}", "", f"`{_shown_command(o.step)}`", "", "```"]
        lines += ([f"... ({cut} earlier lines)"] if cut else []) + shown + ["```"]
    return "\n".join(lines) + "\n"


def _shown_command(step: Step) -> str:
    argv = ["python3" if a == sys.executable else a for a in step.argv]
    if step.name == "versions":
        argv = ["python3", "-c", "<print versions>"]
    if step.name == "install wheels":
        argv = [
            *argv[: argv.index("--target") + 2],
            f"<{len(argv) - argv.index('--target') - 2} wheels>",
        ]
    return " ".join(argv)


# -- the dry run ------------------------------------------------------------------------------


@functools.cache
def _modules_import(modules: tuple[str, ...]) -> str | None:
    """None where all import in a fresh interpreter (as the step would), else the error."""
    code = "import importlib, sys\nfor m in sys.argv[1:]:\n    importlib.import_module(m)\n"
    done = subprocess.run(
        [sys.executable, "-c", code, *modules],
        cwd=ROOT,
        env=step_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    if done.returncode == 0:
        return None
    tail = done.stderr.strip().splitlines()
    return tail[-1] if tail else f"exit {done.returncode}"


def _overrides_compose(overrides: tuple[str, ...]) -> str | None:
    sys.path.insert(0, str(ROOT))
    from study.config import ConfigError, compose_config, validate

    try:
        validate(compose_config(list(overrides)))
    except ConfigError as exc:
        return str(exc)
    return None


def _collects(args: tuple[str, ...]) -> str | None:
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--co", "-q", "-p", "no:cacheprovider", *args],
        cwd=ROOT,
        env=step_env(),
        capture_output=True,
        text=True,
        timeout=180,
    )
    found = re.search(r"(\d+)(?:/\d+)? tests? (?:collected|selected)", done.stdout)
    if done.returncode != 0 or not found or int(found.group(1)) == 0:
        tail = (done.stdout + done.stderr).strip().splitlines()
        return f"pytest collects nothing ({tail[-1] if tail else done.returncode})"
    return None


def check_step(step: Step) -> list[str]:
    """What would stop this step from running as planned (empty: it resolves)."""
    problems = []
    exe = step.argv[0]
    if not (Path(exe).is_file() or shutil.which(exe)):
        problems.append(f"{exe}: not found")
    for rel in step.files:
        if not (ROOT / rel).exists():
            problems.append(f"{rel}: no such file")
    missing = [m for m in step.modules if importlib.util.find_spec(m.split(".")[0]) is None]
    if missing:
        problems.append(f"not importable: {', '.join(missing)}")
    elif step.modules and step.name != "install wheels":
        error = _modules_import(tuple(step.modules))
        if error:
            problems.append(f"import fails: {error}")
    if step.overrides is not None:
        error = _overrides_compose(step.overrides)
        if error:
            problems.append(f"config: {error}")
    if step.collect is not None:
        error = _collects(step.collect)
        if error:
            problems.append(error)
    return problems


def _requirements(dist_info: Path) -> list[str]:
    """The names a wheel requires on the GPU machine's Python (extras and other platforms out)."""
    from packaging.requirements import Requirement

    env = {
        "python_version": GPU_PYTHON["version"],
        "python_full_version": GPU_PYTHON["full"],
        "sys_platform": "linux",
        "platform_system": "Linux",
        "platform_machine": "x86_64",
        "os_name": "posix",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "extra": "",
    }
    names = []
    for line in (dist_info / "METADATA").read_text(errors="replace").splitlines():
        if not line.startswith("Requires-Dist:"):
            continue
        req = Requirement(line.split(":", 1)[1].strip())
        if req.marker is None or req.marker.evaluate(env):
            names.append(req.name)
    return names


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def image_packages() -> set[str]:
    lines = IMAGE_PACKAGES.read_text().splitlines()
    return {_norm(x.strip()) for x in lines if x.strip() and not x.startswith("#")}


def check_wheels(wheels: Path) -> list[str]:
    """The wheels install into a scratch target for the GPU's Python, and every requirement of
    them and of the project (pyproject.toml) is carried or in the image."""
    files = sorted(wheels.glob("*.whl"))
    if not files:
        return [f"{wheels}: no wheels"]
    with tempfile.TemporaryDirectory() as scratch:
        platform_args = [a for p in PLATFORMS for a in ("--platform", p)]
        done = subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
             "--no-compile", "--only-binary=:all:", "--python-version", GPU_PYTHON["version"],
             "--implementation", "cp", *platform_args, "--target", scratch, *map(str, files)],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        if done.returncode != 0:
            tail = done.stderr.strip().splitlines()
            return [f"pip cannot install the wheels: {tail[-1] if tail else done.returncode}"]
        infos = sorted(Path(scratch).glob("*.dist-info"))
        carried = {_norm(i.name.split("-")[0]) for i in infos}
        there = image_packages() | carried
        problems = []
        for info in infos:
            lacking = sorted({_norm(n) for n in _requirements(info)} - there)
            if lacking:
                problems.append(f"{info.name}: needs {', '.join(lacking)}: not carried, not there")
    problems += [
        f"the project needs {name}: not carried, not there"
        for name in project_requirements()
        if _norm(name) not in there and _norm(name) not in OPTIONAL_THERE
    ]
    return problems


def project_requirements() -> list[str]:
    import tomllib  # Python >= 3.11
    from packaging.requirements import Requirement

    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return [Requirement(r).name for r in data["project"]["dependencies"]]


def dry_run(steps: list[Step], wheels: Path) -> int:
    failures = 0
    total = sum(s.timeout_s for s in steps) + (0 if steps[0].name == "install wheels" else 40)
    print(f"plan: {len(steps)} steps, limits adding up to {total} s (budget {BUDGET_S} s)")
    if total > BUDGET_S:
        print(f"FAIL budget: {total} s > {BUDGET_S} s")
        failures += 1
    for step in steps:
        problems = [] if step.name == "install wheels" else check_step(step)
        status = "ok" if not problems else "FAIL " + "; ".join(problems)
        failures += bool(problems)
        print(f"{status:>4} {step.name} ({step.timeout_s} s): {_shown_command(step)}")
    if wheels.is_dir() and any(wheels.glob("*.whl")):
        problems = check_wheels(wheels)
        failures += bool(problems)
        status = "ok" if not problems else "FAIL " + "; ".join(problems)
        print(f"{status:>4} wheels: {len(list(wheels.glob('*.whl')))} in {wheels} install for "
              f"Python {GPU_PYTHON['version']} and meet their requirements")  # fmt: skip
    else:
        print(
            f"skip wheels: no {wheels} here (make it with ../shared/tools/gpu-wheels.sh {wheels})"
        )
    print("dry run: " + ("ok" if not failures else f"{failures} check(s) FAILED"))
    return 0 if not failures else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheels", type=Path, default=ROOT / ".whl")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--problems", default=",".join(SUITE))
    parser.add_argument("--skip", default="", help="step names to leave out, comma-separated")
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args(argv)
    problems = [p for p in args.problems.split(",") if p]
    unknown = [p for p in problems if not (ROOT / "conf" / "problem" / f"{p}.yaml").is_file()]
    if unknown:
        print(f"error: unknown problem(s) {', '.join(unknown)} (conf/problem/)", file=sys.stderr)
        return 2
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    if args.dry_run:
        workdir = Path(tempfile.gettempdir()) / "gpu-run-dry"  # named, never made
        steps = [s for s in plan(problems, args.wheels, workdir) if s.name not in skip]
        return dry_run(steps, args.wheels)
    workdir = Path(tempfile.mkdtemp(prefix="gpu-run-"))
    steps = [s for s in plan(problems, args.wheels, workdir) if s.name not in skip]
    started = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    out = args.out or ROOT / "docs" / "gpu-runs" / f"{dt.date.today().isoformat()}-{gpu_slug()}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    outcomes = [Outcome(s) for s in steps]
    for i, step in enumerate(steps):
        print(f"\n=== {step.name} (limit {step.timeout_s} s)", flush=True)
        outcomes[i] = run_step(step)
        out.write_text(render(outcomes, started))
    print(f"\nwritten: {out}")
    return 0 if all(o.rc == 0 for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
