"""Real studies in subprocesses: what the study keeps out of its candidates' reach, and how it
stops and refuses.

- A plugin's import never runs in the study process (study/registration.py reads it in a child).
- A record rewritten in the SQLite file after the study ended is found on resume (exit 2) and
  by `study.export` (refused, exit 1), against a control that passes before the rewrite.
- SIGTERM mid-trial ends the run as Ctrl-C does: that trial FAIL with the reason, none
  RUNNING, exit status 143.
- A read-only outputs/ and a plugin's malformed `params` are one line and exit status 2.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from kernels import register
from study.measure import contain
from tests.conftest import ROOT, TINY, load_only_study, run_study

ONE = ["space.mutations.layout=[bhsd]", "space.mutations.threads=[0]", "sampler=grid"]
FAULTS = ROOT / "tests" / "hostile" / "_faults.py"
HAS_BWRAP = contain.bwrap_problem() is None

MARKING_PLUGIN = textwrap.dedent("""
    import json, os, sys
    from pathlib import Path
    from kernels import plain_attention, register

    # Where this file is imported, say so; in the study process, forge every verdict.
    mark = Path(os.environ["IMPORT_MARKERS"]) / f"{os.getpid()}-{os.urandom(4).hex()}.json"
    name = __import__("multiprocessing").current_process().name
    mark.write_text(json.dumps({"pid": os.getpid(), "argv": sys.argv, "name": name}))
    objective = sys.modules.get("study.objective")
    if objective is not None:
        def forged(self, trial):
            trial.set_user_attr("pwned", True)
            return 1e-6
        objective.Objective.__call__ = forged

    @register("marks_its_importer")
    def build(problem):
        return lambda q, k, v: plain_attention(q, k, v, problem.causal, problem.scale)
""")


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def test_the_study_process_never_imports_a_plugin(tmp_path, monkeypatch):
    plugin = tmp_path / "marking.py"
    plugin.write_text(MARKING_PLUGIN)
    markers = tmp_path / "markers"
    monkeypatch.setenv("IMPORT_MARKERS", str(markers))
    proc = run_study(
        tmp_path,
        *TINY,
        *ONE,
        f"space.plugins=[{plugin}]",
        "space.variants=[marks_its_importer]",
        f"worker.writable=[{markers}]",
        "study.n_trials=1",
        "study.retime_top_k=1",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = load_only_study(tmp_path)
    (trial,) = study.trials
    assert trial.state == TrialState.COMPLETE and "pwned" not in trial.user_attrs
    assert trial.value > 1e-3
    marks = [json.loads(p.read_text()) for p in markers.iterdir()]
    importers = sorted(
        m["name"] if m["name"].startswith("runner-") else Path(m["argv"][0]).name for m in marks
    )
    # the registration child and a candidate runner per evaluation (the study's trial, the
    # re-timing's three rounds); never a worker (the judge) and never study/run.py
    assert importers == ["registration.py", *["runner-candidate"] * 4], marks
    assert trial.user_attrs["pid"] not in {m["pid"] for m in marks}


def _tamper(db: Path, number: int) -> None:
    """A detached process (its own session, after the study ended) rewrites one trial."""
    script = textwrap.dedent(f"""
        import sqlite3
        conn = sqlite3.connect({str(db)!r})
        (tid,) = conn.execute("SELECT trial_id FROM trials WHERE number = {number}").fetchone()
        conn.execute("UPDATE trial_values SET value = value / 50 WHERE trial_id = ?", (tid,))
        conn.execute(
            "UPDATE trial_user_attributes SET value_json = '50.0' "
            "WHERE trial_id = ? AND key = 'speedup'", (tid,)
        )
        conn.commit()
    """)
    writer = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    assert writer.wait(timeout=60) == 0


def test_a_record_rewritten_after_the_study_is_found_on_resume_and_by_export(tmp_path):
    args = [*TINY, *ONE, "space.variants=[plain]", "study.n_trials=1", "study.name=sealed"]
    args += ["study.retime_top_k=0"]
    assert run_study(tmp_path, *args).returncode == 0
    db = tmp_path / "outputs" / "studies.db"
    url = f"storage.url=sqlite:///{db}"
    control = run_study(tmp_path, url, f"out={tmp_path / 'ok.json'}", module="study.export")
    assert control.returncode == 0, control.stdout + control.stderr
    assert "refused" not in control.stdout
    _tamper(db, 0)

    resumed = run_study(tmp_path, *args)
    assert resumed.returncode == 2
    lines = resumed.stderr.strip().splitlines()
    assert lines[-1].startswith(
        "error: study 'sealed': 1 trial record(s) were changed after they were judged "
        "(trial 0: the record differs from its verdict digest)"
    ), resumed.stderr
    assert not any("Traceback" in line for line in lines)
    assert [t.state for t in load_only_study(tmp_path).trials] == [TrialState.COMPLETE]

    out = tmp_path / "tuned.json"
    exported = run_study(tmp_path, url, f"out={out}", module="study.export")
    assert exported.returncode == 1, exported.stdout + exported.stderr
    assert exported.stdout.startswith(
        "sealed: refused: study 'sealed': 1 trial record(s) were changed after they were judged"
    ), exported.stdout
    assert json.loads(out.read_text())["entries"] == {}


def _wait_for_running(db: Path, marker: Path, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        if marker.exists() and db.exists():
            url = f"sqlite:///{db}"
            summaries = optuna.get_all_study_summaries(url)
            if summaries:
                study = optuna.load_study(study_name=summaries[0].study_name, storage=url)
                if any(t.state == TrialState.RUNNING for t in study.trials):
                    return
        time.sleep(0.3)
    raise AssertionError("the study never reached a running trial")


@pytest.mark.skipif(not Path("/proc").exists(), reason="reads /proc")
def test_sigterm_mid_trial_ends_the_trial_fail_and_exits_143(tmp_path):
    markers = tmp_path / "markers"
    marker = markers / "slow.marker"  # fault_slow_once sleeps a minute while it is missing
    args = [*TINY, *ONE, f"space.plugins=[{FAULTS}]", "space.variants=[fault_slow_once]"]
    args += [f"worker.writable=[{markers}]", "study.n_trials=3", "study.retime_top_k=0"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "study.run", *args],
        cwd=tmp_path,
        env=_env(FAULT_MARKER=str(marker)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for_running(tmp_path / "outputs" / "studies.db", marker, proc)
    workers = contain.descendants(proc.pid)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr[-3000:]
    assert "interrupted: finished trials are saved; rerun to resume (SIGTERM)" in stderr
    assert "Traceback" not in stderr
    study = load_only_study(tmp_path)
    assert [t.state for t in study.trials] == [TrialState.FAIL]
    assert study.trials[0].user_attrs["error"] == (
        "interrupted: the study was stopped (SIGTERM) mid-trial"
    )
    assert workers
    for pid in workers:  # the worker and all below it went with the study
        assert _gone(pid, 10), f"process {pid} outlived the stopped study"


def _gone(pid: int, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.2)
    return False


def test_a_read_only_outputs_folder_is_one_line_and_exit_2(tmp_path):
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    command = [sys.executable, "-m", "study.run", *TINY, "space.variants=[plain]"]
    if os.geteuid() != 0:
        outputs.chmod(0o555)
    elif HAS_BWRAP:  # root writes through permission bits: mount outputs/ read-only instead
        command = ["bwrap", "--bind", "/", "/", "--ro-bind", str(outputs), str(outputs),
                   "--dev", "/dev", "--proc", "/proc", *command]  # fmt: skip
    else:
        pytest.skip("as root, a read-only outputs/ needs bwrap to mount it")
    proc = subprocess.run(
        command, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: cannot create the run folder outputs/runs/"), lines
    assert lines[0].endswith(("Permission denied", "Read-only file system")), lines


def test_malformed_params_are_named_with_the_form_expected():
    def build(problem, chunk):
        return None

    with pytest.raises(ValueError) as got:
        register("wrong_form", params={"chunk": 64})(build)
    assert (
        str(got.value)
        == "variant 'wrong_form': params['chunk'] must be a list of choices, got int 64"
    )
    with pytest.raises(ValueError) as got:
        register("wrong_form", params="chunk=64")(build)
    assert str(got.value) == (
        "variant 'wrong_form': params must be a dict {name: [choices]}, got str 'chunk=64'"
    )
    with pytest.raises(ValueError, match="params\\['chunk'\\] must be a list of choices, got str"):
        register("wrong_form", params={"chunk": "64"})(build)


def test_a_plugin_with_malformed_params_is_one_line_and_exit_2(tmp_path):
    plugin = tmp_path / "wrong_form.py"
    plugin.write_text(
        "from kernels import register\n\n"
        "@register('wrong_form', params={'chunk': 64})\n"
        "def build(problem, chunk):\n"
        "    return None\n"
    )
    proc = run_study(tmp_path, *TINY, f"space.plugins=[{plugin}]", "space.variants=[wrong_form]")
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert lines[-1] == (
        f"error: plugin {plugin} failed to import: ValueError: variant 'wrong_form': "
        "params['chunk'] must be a list of choices, got int 64"
    ), lines
    assert not any("Traceback" in line or "not iterable" in line for line in lines)
