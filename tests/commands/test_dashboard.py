"""The dashboard on a real study: WSGI API with our attrs, note and logs; the page in Chromium."""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from wsgiref.util import setup_testing_defaults

import pytest

from study import dashboard
from study.results import publish
from tests.conftest import ROOT
from tests.results.test_report import finished_study  # noqa: F401 - the shared session fixture

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def wsgi_get(app, path: str) -> tuple[str, bytes]:
    environ: dict = {"PATH_INFO": path, "REQUEST_METHOD": "GET"}
    setup_testing_defaults(environ)
    environ["wsgi.input"] = io.BytesIO()
    status: list[str] = []
    body = b"".join(app(environ, lambda s, h, e=None: status.append(s)))
    return status[0], body


def attrs_of(trial: dict) -> dict:
    return {a["key"]: a["value"] for a in trial["user_attrs"]}


def test_api_serves_our_attrs_note_and_logs(finished_study):  # noqa: F811
    app = dashboard.app(finished_study.url, publish.artifacts_dir_for(finished_study.url))
    status, body = wsgi_get(app, "/api/studies")
    assert status.startswith("200")
    (summary,) = json.loads(body)["study_summaries"]
    assert summary["study_name"] == finished_study.study.study_name
    status, body = wsgi_get(app, f"/api/studies/{summary['study_id']}")
    assert status.startswith("200")
    detail = json.loads(body)
    trials = detail["trials"]
    assert len(trials) == len(finished_study.study.trials)
    seen = set()
    for trial in trials:
        attrs = attrs_of(trial)
        assert "variant" in attrs
        seen.add(trial["state"])
        if trial["state"] == "Complete":
            for name in ("latency_us", "baseline_latency_us", "speedup", "tflops", "rel_err"):
                assert name in attrs, (trial["number"], name)
            assert trial["params"], trial
        elif trial["state"] == "Pruned":
            assert attrs["rejected_by"]
        elif trial["state"] == "Fail":
            assert attrs["error"]
        if trial["state"] in ("Pruned", "Fail") and attrs.get("measured") == "true":
            # the full worker log of the trial, served by the dashboard
            (artifact,) = trial["artifacts"]
            path = f"/artifacts/{summary['study_id']}/{trial['trial_id']}/{artifact['artifact_id']}"
            status, log = wsgi_get(app, path)
            assert status.startswith("200")
            assert f"--- evaluate trial {trial['number']}: ".encode() in log
            if attrs["variant"] == "raises":
                assert b"kernel exploded" in log
    assert seen == {"Complete", "Pruned", "Fail"}
    # the study's note: the summary table and the environment of the last run
    note = detail["note"]["body"]
    assert "| # | trial | candidate |" in note and "### Environment" in note
    best = min(t.value for t in finished_study.study.trials if t.value is not None)
    assert f"{best:.1f}" in note
    # ... opened by the verdict, as the console and report.md are
    sentence = finished_study.study.user_attrs["verdict"]["sentence"]
    assert note.splitlines()[2] == f"**{sentence}**"


def test_cli_refuses_bad_arguments(tmp_path, capsys):
    assert dashboard.main(["port=notaport"]) == 2
    assert dashboard.main([f"storage.url=sqlite:///{tmp_path / 'none.db'}"]) == 2
    assert dashboard.main(["colour=blue"]) == 2
    err = capsys.readouterr().err
    assert "not a number" in err and "no study database" in err and "unknown argument" in err


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_page_renders_in_headless_chromium(finished_study, tmp_path):  # noqa: F811
    port = free_port()
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "study.dashboard",
            f"storage.url={finished_study.url}",
            f"port={port}",
        ],
        cwd=finished_study.cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{base}/api/studies", timeout=5) as resp:
                    study_id = json.loads(resp.read())["study_summaries"][0]["study_id"]
                break
            except OSError:
                assert server.poll() is None, server.communicate()[1][-2000:]
                assert time.monotonic() < deadline, "the dashboard did not answer in 60 s"
                time.sleep(0.3)
        url = f"{base}/dashboard/studies/{study_id}"
        flags = [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--virtual-time-budget=10000",
        ]
        dom = subprocess.run(
            [*flags, "--dump-dom", url], capture_output=True, text=True, timeout=120
        )
        assert finished_study.study.study_name in dom.stdout, dom.stderr[-2000:]
        png: Path = tmp_path / "dashboard.png"
        shot = subprocess.run(
            [*flags, "--window-size=1280,900", f"--screenshot={png}", url],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert png.is_file(), shot.stderr[-2000:]
        data = png.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        assert len(data) > 20_000, len(data)  # a blank 1280x900 page compresses to a few KB
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
