"""Containment (study/measure/contain.py) with real processes: what a candidate starts dies with
its trial, and inside bwrap it cannot write the study's files, see the key store, the study's
processes or the network. The bwrap cases are skipped where bwrap cannot run (say so: CI
installs it, .ci/run)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from kernels import Problem
from study.measure import contain
from study.measure.worker import Worker, evaluate_task
from tests.conftest import ROOT

HAS_BWRAP = contain.bwrap_problem() is None
needs_bwrap = pytest.mark.skipif(not HAS_BWRAP, reason=f"{contain.bwrap_problem()}")
LINUX = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")

# A child that makes itself the subreaper, then leaves behind a daemon: double fork, setsid,
# its pid written on stdout, then nothing but sleep. The daemon is not in its process group.
DAEMONISER = textwrap.dedent("""
    import os, sys, time
    from study.measure import contain
    contain.set_subreaper()
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            print(os.getpid(), flush=True)
            time.sleep(600)
        os._exit(0)
    time.sleep(600)
""")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


@LINUX
def test_kill_reaches_a_daemon_that_left_the_process_group():
    proc = contain.spawn(
        [sys.executable, "-c", DAEMONISER],
        contain.Sandbox(enabled=False),
        stdout=subprocess.PIPE,
        env=_env(),
    )
    daemon = int(proc.popen.stdout.readline())
    assert _alive(daemon)
    assert os.getpgid(daemon) != os.getpgid(proc.pid)  # killpg alone would miss it
    assert daemon in contain.descendants(proc.pid)  # re-parented to the subreaper
    proc.kill()
    deadline = time.monotonic() + 10
    while _alive(daemon) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(daemon)
    assert not proc.alive()


@LINUX
def test_kill_descendants_ends_a_trials_leftovers_and_spares_the_caller():
    script = textwrap.dedent("""
        import os, time
        from study.measure import contain
        contain.set_subreaper()
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                print(os.getpid(), flush=True)
                time.sleep(600)
            os._exit(0)
        time.sleep(0.5)
        n = contain.kill_descendants()
        print(n, len(contain.descendants(os.getpid(), live_only=False)), flush=True)
    """)
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=_env(), timeout=60
    )
    assert out.returncode == 0, out.stderr
    daemon, killed_line = out.stdout.splitlines()
    assert killed_line == "1 0"  # one daemon killed, nothing left below the caller
    assert not _alive(int(daemon))


def test_candidate_env_drops_the_storage_url_and_credentials():
    env = {
        "KERNEL_STUDY_STORAGE_URL": "postgresql://u:pw@h/db",
        "PGPASSWORD": "pw",
        "MY_API_TOKEN": "t",
        "AWS_SECRET_ACCESS_KEY": "s",
        "PATH": "/usr/bin",
        "CUDA_VISIBLE_DEVICES": "0",
        "PYTHONPATH": "/x",
    }
    assert contain.candidate_env(env) == {
        "PATH": "/usr/bin",
        "CUDA_VISIBLE_DEVICES": "0",
        "PYTHONPATH": "/x",
    }


def test_exit_reasons():
    assert contain.exit_reason(-signal.SIGSEGV, sandboxed=False) == "killed by SIGSEGV"
    assert contain.exit_reason(128 + signal.SIGABRT, sandboxed=True) == "killed by SIGABRT"
    assert contain.exit_reason(139, sandboxed=False) == "exited with status 139"
    assert contain.exit_reason(3, sandboxed=True) == "exited with status 3"


def test_a_disabled_or_missing_sandbox_says_so_in_one_line():
    off = contain.Sandbox(enabled=False)
    assert off.argv() == [] and not off.active
    assert "worker.sandbox=off" in off.warning() and "\n" not in off.warning()
    on = contain.Sandbox()
    if HAS_BWRAP:
        assert on.warning() is None and on.argv()[0].endswith("bwrap")
    else:
        assert on.argv() == [] and "not sandboxed" in on.warning()


PROBE = textwrap.dedent("""
    import json, os, socket, sys
    out = {"pid": os.getpid(), "pids": sorted(int(p) for p in os.listdir("/proc") if p.isdigit())}
    for name, path in (("study", sys.argv[1]), ("scratch", sys.argv[2]), ("tmp", "/dev/shm/x")):
        try:
            with open(path, "w") as fh:
                fh.write("x")
            out[name] = "written"
        except OSError as exc:
            out[name] = exc.strerror
    out["hidden"] = os.listdir(sys.argv[3])
    out["net"] = open("/proc/net/dev").read().count(":")  # one line per interface
    try:
        socket.create_connection(("127.0.0.1", int(sys.argv[4])), timeout=2)
        out["connect"] = "connected"
    except OSError as exc:
        out["connect"] = type(exc).__name__
    print(json.dumps(out))
""")


@needs_bwrap
def test_bwrap_sandbox_is_read_only_pid_and_net_isolated_and_hides_the_keys(tmp_path):
    study_dir, scratch, keys = tmp_path / "outputs", tmp_path / "scratch", tmp_path / "keys"
    study_dir.mkdir()
    keys.mkdir()
    (keys / "secret.json").write_text("{}")
    server = __import__("socket").create_server(("127.0.0.1", 0))  # a storage server stand-in
    port = server.getsockname()[1]
    sandbox = contain.Sandbox(writable=(str(scratch),), hidden=(str(keys),))
    proc = contain.spawn(
        [sys.executable, "-c", PROBE, str(study_dir / "studies.db"), str(scratch / "f"),
         str(keys), str(port)],
        sandbox,
        stdout=subprocess.PIPE,
        env=_env(),
    )  # fmt: skip
    out, _ = proc.popen.communicate(timeout=60)
    server.close()
    got = json.loads(out)
    assert got["study"] == "Read-only file system"
    assert got["scratch"] == "written" and (scratch / "f").read_text() == "x"
    assert got["tmp"] == "written"  # a private /dev/shm is the scratch space (TMPDIR)
    assert got["hidden"] == [] and (keys / "secret.json").exists()
    assert got["pid"] <= 3 and max(got["pids"]) < 10  # its own PID namespace
    assert got["net"] == 1  # loopback only: the study's server is out of reach
    assert got["connect"] == "ConnectionRefusedError"
    assert not (study_dir / "studies.db").exists()
    proc.kill()


LEAVER = textwrap.dedent("""
    import os, time
    from kernels import plain_attention, register

    @register("leaves_a_daemon")
    def build(problem):
        def run(q, k, v):
            if not getattr(run, "done", False):
                run.done = True
                if os.fork() == 0:
                    os.setsid()
                    if os.fork() == 0:
                        time.sleep(600)
                    os._exit(0)
            return plain_attention(q, k, v, problem.causal, problem.scale)
        return run
""")


# The same, and it switches off the clean-up in its own process: the runner's copy of contain;
# the judge, which kills the leftovers, runs none of the candidate's code.
PATCHER = LEAVER.replace(
    "from kernels import plain_attention, register\n",
    "from kernels import plain_attention, register\n"
    "from study.measure import contain\n"
    "contain.kill_descendants = lambda: 0\n",
)


@LINUX
@pytest.mark.parametrize("enabled", [False, True], ids=["tree-only", "bwrap"])
@pytest.mark.parametrize("source", [LEAVER, PATCHER], ids=["plain", "patches-clean-up"])
def test_what_the_candidate_left_running_dies_before_the_reply_is_used(tmp_path, enabled, source):
    if enabled and not HAS_BWRAP:
        pytest.skip(str(contain.bwrap_problem()))
    plugin = tmp_path / "leaver.py"
    plugin.write_text(source)
    worker = Worker("cpu", [str(plugin)], tmp_path / "worker.log", 0, contain.Sandbox(enabled))
    problem = Problem(1, 2, 2, 32, 32, 16, dtype="float32")
    bench = {"check_sets": 1, "warmup": 1, "buffers": 2, "min_reps": 3, "max_reps": 5,
             "target_spread": 0.5, "time_cap_s": 2.0, "cache": "hot"}  # fmt: skip
    candidate = {"variant": "leaves_a_daemon", "params": {}, "mutations": {}}
    try:
        reply = worker.call("evaluate", evaluate_task(problem, candidate, bench, 1, "t"), 300)
        assert reply["status"] == "ok", reply
        # the daemon was re-parented to the judge (the subreaper) and killed by it
        assert "killed 1 process(es) the candidate left running" in reply["log"], reply["log"]
        # below the worker's root: the judge's own processes only (the fork server, the
        # resource tracker, the baseline's runner), under bwrap also its init and the worker
        below = contain.descendants(worker.process.pid)
        assert len(below) == (5 if enabled else 3), below
        assert worker.process.sandboxed == enabled
    finally:
        worker.stop()


@pytest.mark.gpu
@needs_bwrap
def test_cuda_runs_inside_the_sandbox_with_the_device_nodes_bound_in():
    script = "import torch; print(float(torch.ones(4, device='cuda').sum()))"
    proc = contain.spawn(
        [sys.executable, "-c", script],
        contain.Sandbox(),
        gpu=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_env(),
    )
    out, err = proc.popen.communicate(timeout=300)
    assert proc.sandboxed and proc.popen.returncode == 0, err[-2000:]
    assert out.decode().strip() == "4.0"


COMPILE = textwrap.dedent("""
    import os, torch
    f = torch.compile(lambda x: (x * 2).sin(), backend="inductor")
    x = torch.randn(8)
    assert torch.allclose(f(x), (x * 2).sin())
    print(os.environ["TORCHINDUCTOR_CACHE_DIR"])
""")


@needs_bwrap
def test_candidates_compile_in_the_sandbox_whatever_cache_the_study_inherited(tmp_path):
    """The study's environment names a cache on the read-only file system (inductor puts
    TORCHINDUCTOR_CACHE_DIR into its process's environment once it has compiled, and the test
    suite's process has): a sandboxed process still compiles, into the scratch space."""
    cache = tmp_path / "inductor-cache"
    cache.mkdir()
    env = _env() | {"TORCHINDUCTOR_CACHE_DIR": str(cache), "TRITON_CACHE_DIR": str(cache)}
    proc = contain.spawn(
        [sys.executable, "-c", COMPILE], contain.Sandbox(), stdout=subprocess.PIPE, env=env
    )
    out, _ = proc.popen.communicate(timeout=300)
    assert proc.popen.returncode == 0
    assert out.decode().strip() == f"{contain.SCRATCH}/torchinductor"
    assert not any(cache.iterdir())  # nothing written where the study's variable pointed
