"""Optuna's own tools on our storage: `optuna studies/trials/best-trial` and plain
`optuna-dashboard`, run as a user would on the SQLite file of a real study."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from optuna.trial import TrialState

from tests.results.test_report import finished_study  # noqa: F401 - the shared session fixture


def tool(name: str) -> str:
    """The console script installed beside this interpreter (else the one on PATH)."""
    here = Path(sys.executable).parent / name
    found = str(here) if here.is_file() else shutil.which(name)
    assert found, f"{name} is not installed"
    return found


def optuna_cli(*args: str) -> object:
    done = subprocess.run(
        [tool("optuna"), *args, "-f", "json"], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


def test_optuna_cli_lists_our_study_and_its_trials(finished_study):  # noqa: F811
    study = finished_study.study
    url = finished_study.url
    (summary,) = optuna_cli("studies", "--storage", url)
    assert summary["name"] == study.study_name
    assert summary["n_trials"] == len(study.trials)
    assert summary["direction"] == ["MINIMIZE"]
    assert summary["user_attrs"]["problem"] == study.user_attrs["problem"]

    rows = optuna_cli("trials", "--study-name", study.study_name, "--storage", url)
    assert [r["number"] for r in rows] == [t.number for t in study.trials]
    for row, trial in zip(rows, study.trials, strict=True):
        assert row["state"] == trial.state.name
        # the value under its metric name, as the study named it
        value = trial.value if trial.state == TrialState.COMPLETE else None
        assert row["value"] == {"value_us": value}
        assert row["user_attrs"]["variant"] == trial.user_attrs["variant"]

    best = optuna_cli("best-trial", "--study-name", study.study_name, "--storage", url)
    assert best["number"] == study.best_trial.number
    assert best["value"] == {"value_us": study.best_value}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


def test_plain_optuna_dashboard_serves_our_study(finished_study):  # noqa: F811
    port = free_port()
    server = subprocess.Popen(
        [tool("optuna-dashboard"), finished_study.url, "--port", str(port), "--host", "127.0.0.1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ),
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                studies = get_json(f"{base}/api/studies")["study_summaries"]
                break
            except OSError:
                assert server.poll() is None, server.communicate()[1][-2000:]
                assert time.monotonic() < deadline, "optuna-dashboard did not answer in 60 s"
                time.sleep(0.3)
        (summary,) = studies
        assert summary["study_name"] == finished_study.study.study_name
        detail = get_json(f"{base}/api/studies/{summary['study_id']}")
        trials = {t["number"]: t for t in detail["trials"]}
        assert set(trials) == {t.number for t in finished_study.study.trials}
        for trial in finished_study.study.trials:
            attrs = {a["key"]: a["value"] for a in trials[trial.number]["user_attrs"]}
            assert attrs["variant"] == trial.user_attrs["variant"]
            assert trials[trial.number]["state"].upper() == trial.state.name
        assert "| # | trial | candidate |" in detail["note"]["body"]  # our note, read as is
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
