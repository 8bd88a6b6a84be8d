"""Scale-out: a real PostgreSQL server (installed and started by tests/pg.py), several study
processes joined to one study, a SIGKILLed worker whose trial the heartbeat fails and retries, a
journal file, several workers in one process, concurrent creation of one study.

Trials use a plugin variant that sleeps in its build (outside the timed region) and then runs
SDPA, so that a trial lasts a known time and a SIGKILL lands mid-trial.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from study.measure.env import differences
from study.storage import HeartbeatJournalStorage, join_study, open_storage
from tests.conftest import ROOT, TINY, run_study
from tests.pg import PgUnavailable, local_server


def fail_stale_trials(study: optuna.Study) -> None:
    """What each worker runs before it starts a trial (experimental since Optuna 2.9)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


SLEEPY = textwrap.dedent("""
    import os
    import time

    import torch.nn.functional as F
    from kernels import register

    @register("sleepy", params={"tag": list(range(400))})
    def build(problem, tag):
        time.sleep(float(os.environ.get("KS_SLEEP_S", "0.2")))  # a slow build: a known trial time
        def run(q, k, v):
            return F.scaled_dot_product_attention(q, k, v, is_causal=problem.causal,
                                                  scale=problem.scale)
        return run
""")


@pytest.fixture(scope="module")
def pg_server():
    try:
        with local_server() as server:
            yield server
    except PgUnavailable as exc:
        pytest.skip(f"PostgreSQL cannot be installed or started here: {exc}")


@pytest.fixture
def pg_url(pg_server):
    return pg_server.create_db()


@pytest.fixture
def sleepy(tmp_path: Path) -> Path:
    path = tmp_path / "sleepy.py"
    path.write_text(SLEEPY)
    return path


def _args(plugin: Path, url: str, n: int, seed: int, *extra: str) -> list[str]:
    return [
        *TINY,
        f"space.plugins=[{plugin}]",
        "space.variants=[sleepy]",
        "space.mutations.layout=[bhsd]",
        "space.mutations.threads=[0]",
        "sampler=random",
        f"study.n_trials={n}",
        "study.retime_top_k=0",
        "study.name=scale",
        f"storage.url={url}",
        "storage.heartbeat_s=1",
        f"seed={seed}",
        *extra,
    ]


def _start(cwd: Path, args: list[str], sleep_s: float) -> subprocess.Popen:
    env = dict(os.environ, KS_SLEEP_S=str(sleep_s))
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.Popen(
        [sys.executable, "-m", "study.run", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(proc: subprocess.Popen, timeout: float = 300) -> str:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    return err


def _states(trials) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in trials:
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


def _why(trials) -> list[tuple]:
    return [
        (t.number, t.state.name, t.user_attrs.get("error") or t.user_attrs.get("rejected_by"))
        for t in trials
        if t.state != TrialState.COMPLETE
    ]


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_three_processes_share_one_study(tmp_path, sleepy, pg_url):
    n = 4
    dirs = [tmp_path / f"machine{i}" for i in range(3)]
    procs = []
    for i, cwd in enumerate(dirs):
        cwd.mkdir()
        procs.append(_start(cwd, _args(sleepy, pg_url, n, seed=i), sleep_s=0.3))
    for proc in procs:
        _finish(proc)
    assert optuna.get_all_study_names(pg_url) == ["scale"]  # created once, joined twice
    study = optuna.load_study(study_name="scale", storage=pg_url)
    assert len(study.trials) == 3 * n
    assert _states(study.trials) == {"COMPLETE": 3 * n}
    assert len({t.user_attrs["pid"] for t in study.trials}) == 3
    for t in study.trials:
        assert t.user_attrs["host"] and t.user_attrs["device_name"].startswith("CPU")
        assert t.user_attrs["variant"] == "sleepy"
    assert study.user_attrs["env"]["device"] == "cpu"


def test_killed_worker_trial_is_failed_by_heartbeat_and_retried(tmp_path, sleepy, pg_url):
    n, sleep_s, grace_s = 5, 2.0, 4  # heartbeat_s=1 -> stale after 4 s
    procs = []
    for i in range(3):
        cwd = tmp_path / f"machine{i}"
        cwd.mkdir()
        procs.append(_start(cwd, _args(sleepy, pg_url, n, seed=10 + i), sleep_s=sleep_s))
    victim = procs[0]
    storage = optuna.storages.RDBStorage(pg_url)

    # Wait until the victim is inside a measured trial (its seed is set just before the worker
    # call, and the build then sleeps for sleep_s), then SIGKILL it.
    deadline = time.monotonic() + 240
    target = None
    while target is None:
        assert time.monotonic() < deadline, "the victim never started a trial"
        assert victim.poll() is None, victim.communicate()[1][-3000:]
        try:
            study_id = storage.get_study_id_from_name("scale")
            running = storage.get_all_trials(study_id, states=(TrialState.RUNNING,))
        except KeyError:
            running = []
        mine = [
            t for t in running if t.user_attrs.get("pid") == victim.pid and "seed" in t.user_attrs
        ]
        if mine:
            target = mine[0]
        else:
            time.sleep(0.1)
    time.sleep(0.3)
    orphans = _children(victim.pid)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    killed_at = time.monotonic()
    assert storage.get_trial(target._trial_id).state == TrialState.RUNNING  # killed mid-trial

    for proc in procs[1:]:
        _finish(proc)
    # The operator restarts the dead machine for the trials it still owed.
    done_by_victim = [
        t
        for t in storage.get_all_trials(study_id, states=(TrialState.COMPLETE,))
        if t.user_attrs.get("pid") == victim.pid
    ]
    time.sleep(max(0.0, grace_s + 1 - (time.monotonic() - killed_at)))
    cwd = tmp_path / "machine0-again"
    cwd.mkdir()
    again = _start(cwd, _args(sleepy, pg_url, n - len(done_by_victim), seed=20), sleep_s=sleep_s)
    _finish(again)

    study = optuna.load_study(study_name="scale", storage=pg_url)
    assert _states(study.trials) == {"COMPLETE": 3 * n, "FAIL": 1}, _why(study.trials)
    (failed,) = [t for t in study.trials if t.state == TrialState.FAIL]
    assert failed.number == target.number
    assert failed.user_attrs["pid"] == victim.pid
    retries = [t for t in study.trials if t.system_attrs.get("failed_trial") == failed.number]
    assert len(retries) == 1
    (retry,) = retries
    assert retry.state == TrialState.COMPLETE
    assert retry.system_attrs["retry_history"] == [failed.number]
    assert retry.params == failed.params
    assert retry.user_attrs["pid"] != victim.pid and retry.user_attrs["measured"] is True
    # The victim's worker process (spawned by it) must not outlive it for long: it ends when
    # its current task is over and it finds the pipe to its dead parent closed.
    deadline = time.monotonic() + 30
    while any(_alive(pid) for pid in orphans) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_alive(pid) for pid in orphans), f"orphaned worker(s) {orphans} still run"


def test_concurrent_joins_create_once_and_compare_environments(pg_url):
    storage = open_storage(pg_url, 1)
    envs = [
        {"device_name": "NVIDIA H100 80GB HBM3", "torch": "2.13.0"},
        {"device_name": "NVIDIA H100 80GB HBM3", "torch": "2.12.0"},
    ] * 3
    barrier = threading.Barrier(len(envs))
    results: list[tuple[int, bool, dict]] = []

    def join(i: int) -> None:
        barrier.wait()
        study, created = join_study(
            storage, "race", optuna.samplers.RandomSampler(), {"env": envs[i], "problem": i}
        )
        results.append((i, created, study.user_attrs["env"]))

    threads = [threading.Thread(target=join, args=(i,)) for i in range(len(envs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == len(envs)
    assert sum(created for _, created, _ in results) == 1
    (creator,) = [i for i, created, _ in results if created]
    # Every joiner sees the creator's environment, so run.py refuses the ones that differ.
    for i, _created, stored in results:
        assert stored == envs[creator]
        assert bool(differences(stored, envs[i])) == (envs[i] != envs[creator])
    assert optuna.get_all_study_names(pg_url) == ["race"]


def test_two_cpu_workers_in_one_process_warn_and_share_the_study(tmp_path, sleepy, pg_url):
    n = 6
    proc = _start(tmp_path, _args(sleepy, pg_url, n, 0, "worker.devices=2"), sleep_s=1.0)
    err = _finish(proc)
    assert "warning: 2 workers share the CPU: their timings interfere" in err
    study = optuna.load_study(study_name="scale", storage=pg_url)
    assert _states(study.trials) == {"COMPLETE": n}
    logs = sorted(p.name for p in tmp_path.glob("outputs/runs/*/*/worker*.log"))
    assert logs == ["worker-1.log", "worker.log"]
    # both workers ran trials at the same time
    spans = sorted((t.datetime_start, t.datetime_complete) for t in study.trials)
    assert any(b[0] < a[1] for a, b in zip(spans, spans[1:], strict=False))


def test_journal_storage_two_processes(tmp_path, sleepy):
    journal = tmp_path / "shared" / "studies.journal"
    url = f"journal:///{journal}"  # four slashes: absolute
    n = 3
    procs = []
    for i in range(2):
        cwd = tmp_path / f"machine{i}"
        cwd.mkdir()
        procs.append(_start(cwd, _args(sleepy, url, n, seed=i), sleep_s=0.2))
    for proc in procs:
        _finish(proc)
    study = optuna.load_study(study_name="scale", storage=open_storage(url))
    assert _states(study.trials) == {"COMPLETE": 2 * n}
    assert len({t.user_attrs["pid"] for t in study.trials}) == 2


def test_journal_heartbeat_fails_and_retries_a_stale_trial(tmp_path):
    url = f"journal:///{tmp_path / 'j.journal'}"
    storage = open_storage(url, heartbeat_s=1)
    assert isinstance(storage, HeartbeatJournalStorage)
    study = optuna.create_study(study_name="hb", storage=storage)
    trial = study.ask()  # a trial whose process "died": nobody beats for it
    trial.suggest_int("x", 0, 9)
    storage.record_heartbeat(trial._trial_id)
    fail_stale_trials(study)
    assert study.trials[0].state == TrialState.RUNNING  # fresh beat: not stale
    time.sleep(5)
    fail_stale_trials(study)
    states = [t.state for t in study.trials]
    assert states == [TrialState.FAIL, TrialState.WAITING]
    retry = study.trials[1]
    assert retry.system_attrs["failed_trial"] == 0 and retry.params == study.trials[0].params
    # The retry, once running, is judged from its own start, not the dead trial's last beat.
    study.optimize(lambda t: float(t.params["x"]), n_trials=1)
    assert study.trials[1].state == TrialState.COMPLETE
    assert study.trials[1].params == study.trials[0].params


def test_sqlite_path_still_resumes_with_heartbeat(tmp_path, sleepy):
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    proc = run_study(tmp_path, *_args(sleepy, url, 2, 0))
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = run_study(tmp_path, *_args(sleepy, url, 2, 1))
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(optuna.load_study(study_name="scale", storage=url).trials) == 4


def test_worker_devices_resolve():
    from study.config import ConfigError
    from study.pool import resolve_devices, shared_warnings

    assert resolve_devices("auto", "cpu") == ["cpu"]
    assert resolve_devices("all", "cpu") == ["cpu"]
    assert resolve_devices(2, "cpu") == ["cpu", "cpu"]
    assert resolve_devices(["cpu", "cpu"], "cpu") == ["cpu", "cpu"]
    assert resolve_devices("all", "cuda:0", count=4) == [f"cuda:{i}" for i in range(4)]
    assert resolve_devices([0, "cuda:2"], "cuda:0", count=4) == ["cuda:0", "cuda:2"]
    assert resolve_devices(2, "cuda:0", count=2) == ["cuda:0", "cuda:1"]
    assert shared_warnings(["cpu", "cpu"]) and not shared_warnings(["cuda:0", "cuda:1"])
    assert "cuda:0" in shared_warnings(["cuda:0", "cuda:0"])[0]
    for bad, count in ((3, 2), ([4], 2), ("x", 0), (0, 0), ([], 0)):
        with pytest.raises(ConfigError):
            resolve_devices(bad, "cuda:0" if count else "cpu", count=count)


@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
def test_many_processes_open_a_new_database_at_once(tmp_path, backend, request):
    """Fresh database, 6 processes: they race to create Optuna's tables; all must get in."""
    if backend == "postgres":
        url = request.getfixturevalue("pg_url")
    else:
        url = f"sqlite:///{tmp_path / 'new.db'}"
    code = (
        "import sys; from study.storage import open_storage, join_study; import optuna\n"
        "s = open_storage(sys.argv[1], 30)\n"
        "join_study(s, 'fresh', optuna.samplers.RandomSampler(), {'env': {}})\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, url], env=env, stderr=subprocess.PIPE, text=True
        )
        for _ in range(6)
    ]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), [e[-500:] for e in errors if e]
    assert optuna.get_all_study_names(url) == ["fresh"]
