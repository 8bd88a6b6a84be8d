"""Real runner processes (study/measure/procs.py, runner.py) driven from the judge's side.

A fork server, runners forked from it, inputs and outputs in shared memory: the gate's checks
across processes, stopping and killing a runner's processes, timeouts and crashes, and the CPU
a candidate's escaped processes use while the baseline runs.
"""

from __future__ import annotations

import os
import textwrap
import time
from pathlib import Path

import pytest

from kernels import Problem
from study.measure import gate, server
from study.measure.guard import Rejected
from study.measure.procs import Deadline, RunnerGone, Runners, descendants
from study.measure.remote import CpuWatch, RemoteCaller, answer
from study.measure.shared import Arena

PROBLEM = Problem(batch=1, heads_q=2, heads_kv=2, seq_q=32, seq_kv=48, head_dim=16, dtype="float32")
PLUGIN = textwrap.dedent("""
    import os, signal, threading, time, ctypes
    import torch
    from kernels import register, plain_attention

    def honest(problem, q, k, v):
        return plain_attention(q, k, v, problem.causal, problem.scale)

    @register("t_honest")
    def b1(problem):
        return lambda q, k, v: honest(problem, q, k, v)

    @register("t_writes")
    def b2(problem):
        def run(q, k, v):
            out = honest(problem, q, k, v)
            v.add_(1.0)
            return out
        return run

    @register("t_cache_by_id")
    def b3(problem):
        cache = {}
        def run(q, k, v):
            if id(q) not in cache:
                cache[id(q)] = (q, honest(problem, q, k, v))
            return cache[id(q)][1].clone()
        return run

    @register("t_late")
    def b4(problem):
        def run(q, k, v):
            out = torch.empty_like(q)
            def finish():
                time.sleep(0.01)
                out.copy_(honest(problem, q, k, v))
            threading.Thread(target=finish).start()
            return out
        return run

    @register("t_hang")
    def b5(problem):
        return lambda q, k, v: time.sleep(3600)

    @register("t_segfault")
    def b6(problem):
        return lambda q, k, v: ctypes.string_at(0)

    @register("t_escapes")
    def b7(problem):
        pid = os.getpid()
        if os.fork() == 0:
            os.setsid()
            while os.getppid() == pid:
                pass  # spins: CPU time the judge must see
            os._exit(0)
        return lambda q, k, v: honest(problem, q, k, v)
""")


@pytest.fixture(scope="module")
def runners(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("runners")
    (folder / "plugin.py").write_text(PLUGIN)
    server.start()
    pool = Runners("cpu", [str(folder / "plugin.py")], 4)
    yield pool
    pool.stop()


def candidate(runners: Runners, variant: str, deadline: Deadline) -> tuple:
    runner = runners.ready(builtin=False)
    arenas = Arena(64 << 20, "cpu"), Arena(16 << 20, "cpu")
    for name, arena in zip(("inputs", "outputs"), arenas, strict=True):
        answer(runner.request("arena", {"name": name, "base": arena.base}, deadline))
    spec = {"problem": PROBLEM.to_dict(), "candidate": {"variant": variant}}
    answer(runner.request("build", spec, deadline))
    return runner, RemoteCaller(PROBLEM, runner, *arenas, deadline)


@pytest.mark.parametrize(
    ("variant", "check"),
    [
        ("t_honest", None),
        ("t_writes", "inputs_modified"),
        ("t_cache_by_id", "cached_output"),
        ("t_late", "output_late"),
    ],
)
def test_the_gate_across_processes(runners: Runners, variant: str, check, fresh_seed) -> None:
    runner, caller = candidate(runners, variant, Deadline(120))
    try:
        if check is None:
            report = gate.run_gate(PROBLEM, caller, lambda t: t, fresh_seed, 1)
            assert report.sets == 7 and 0 < report.max_err <= report.bound
        else:
            with pytest.raises(Rejected) as info:
                gate.run_gate(PROBLEM, caller, lambda t: t, fresh_seed, 1)
            assert info.value.check == check
    finally:
        runner.kill()


def test_a_hang_is_a_timeout_and_a_crash_is_named(runners: Runners, fresh_seed) -> None:
    for variant, error in (
        ("t_hang", "timeout: no result after 3 s"),
        ("t_segfault", "worker crashed: killed by SIGSEGV"),
    ):
        runner, caller = candidate(runners, variant, Deadline(3))
        pid = runner.pid
        with pytest.raises(RunnerGone, match=error):
            gate.run_gate(PROBLEM, caller, lambda t: t, fresh_seed, 1)
        assert not runner.alive() and not Path(f"/proc/{pid}").exists()


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


@pytest.mark.skipif(not Path("/proc").exists(), reason="reads /proc")
def test_stopped_while_the_other_side_runs_killed_with_its_escapees(runners: Runners) -> None:
    runner, _ = candidate(runners, "t_escapes", Deadline(60))
    escaped = descendants(runner.pid)
    assert escaped
    # the fork calls setsid() on its own time: on a loaded machine it may not have yet (a
    # fresh-clone run beside another failed here), so wait until it has left the group
    deadline = time.monotonic() + 10
    while any(os.getpgid(p) == runner.pid for p in escaped) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert all(os.getpgid(pid) != runner.pid for pid in escaped)  # left the group
    watch = CpuWatch(runner)
    runner.pause()
    deadline = time.monotonic() + 5
    while _state(runner.pid) not in ("T", "t") and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _state(runner.pid) in ("T", "t")
    before = watch.before()
    time.sleep(0.3)
    watch.after(before, 0.3)
    assert watch.cpu_s > 0.01  # the escaped process spun on while its group was stopped
    runner.resume()
    assert _state(runner.pid) not in ("T", "t")
    runner.kill()
    time.sleep(0.2)
    for pid in escaped:
        assert not Path(f"/proc/{pid}").exists() or _state(pid) == "Z", pid


def test_no_ptrace_makes_a_process_non_dumpable() -> None:
    """A candidate's process (same user) cannot ptrace them nor read their memory via /proc."""
    import ctypes

    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit status
        server.no_ptrace()
        os._exit(ctypes.CDLL(None).prctl(3, 0, 0, 0, 0))  # PR_GET_DUMPABLE
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
