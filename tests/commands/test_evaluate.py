"""`python -m study.evaluate`: the verdict of a trial for one candidate file, without a study.

The verdicts are compared with those of real studies: built-in variants against a grid study of
the same variants, the shared finished study's plugin (an honest, a wrong and a raising variant)
against its trials, and every file of tests/hostile/ (one folder evaluation: a fresh process per
file) against what tests/measure/test_hostile.py asserts a study gives.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from study import evaluate
from tests.conftest import TINY, load_only_study, run_study
from tests.measure.test_hostile import COMPLETE_PROOF, EXPECTED, HONEST, HOSTILE, outcome
from tests.results.test_report import finished_study  # noqa: F401 - the shared session fixture

BUILTIN = ["plain", "chunked", "sdpa", "sdpa_flash"]
ONE_CHOICE = ["+space.params.chunked.chunk=[16]", "space.mutations.layout=[bhsd]"]
HOSTILE_FILES = sorted(p.name for p in HOSTILE.glob("*.py") if not p.name.startswith("_"))


def judged(proc) -> list[dict]:
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def by_variant(result: dict) -> dict[str, dict]:
    return {r["variant"]: r for r in result.get("variants", [result])}


def test_builtin_variants_get_the_verdict_of_a_study(tmp_path):
    study_cwd, judge_cwd = tmp_path / "study", tmp_path / "judge"
    study_cwd.mkdir()
    judge_cwd.mkdir()
    proc = run_study(
        study_cwd,
        *TINY,
        *ONE_CHOICE,
        f"space.variants=[{','.join(BUILTIN)},sdpa_cudnn]",
        "space.mutations.threads=[0]",
        "sampler=grid",
        f"study.n_trials={len(BUILTIN)}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    left_out = proc.stderr
    trials = {t.user_attrs["variant"]: t for t in load_only_study(study_cwd).trials}
    assert set(trials) == set(BUILTIN)

    proc = run_study(
        judge_cwd,
        *TINY,
        f"variant=[{','.join(BUILTIN)},sdpa_cudnn]",
        "params.chunk=16",
        module="study.evaluate",
    )
    (result,) = judged(proc)
    verdicts = by_variant(result)
    for name in BUILTIN:
        assert verdicts[name]["state"] == trials[name].state.name == "COMPLETE", verdicts[name]
        spec = trials[name].user_attrs["spec"]
        assert verdicts[name]["spec"]["params"] == spec["params"]
        assert verdicts[name]["latency_us"] > 0 and verdicts[name]["baseline_latency_us"] > 0
        low, high = verdicts[name]["speedup_ci"]
        assert low <= verdicts[name]["speedup"] <= high
    # a variant the study leaves out for the problem is not run by the judge either
    assert verdicts["sdpa_cudnn"]["status"] == "unsupported"
    assert f"left out sdpa_cudnn: {verdicts['sdpa_cudnn']['error']}" in left_out
    assert result["status"] == "unsupported" and proc.returncode == 1
    assert Path(result["log"]).is_file()


def test_a_plugin_file_gets_the_verdicts_of_its_trials(finished_study, tmp_path):  # noqa: F811
    proc = run_study(tmp_path, *TINY, str(finished_study.plugin), module="study.evaluate")
    assert proc.returncode == 1, proc.stderr[-3000:]  # wrong_scale and raises: not all ok
    (result,) = judged(proc)
    verdicts = by_variant(result)
    study_variants = {t.user_attrs["variant"] for t in finished_study.study.trials}
    assert set(verdicts) == study_variants - {"plain"}  # the file's variants, not built-ins
    for trial in finished_study.study.trials:
        name = trial.user_attrs["variant"]
        if name not in verdicts or trial.user_attrs.get("rejected_by") == "invalid_params":
            continue
        got = verdicts[name]
        assert got["state"] == trial.state.name, (name, got)
        assert got.get("rejected_by") == trial.user_attrs.get("rejected_by"), (name, got)
        assert got.get("error") == trial.user_attrs.get("error"), (name, got)
    # the file's verdict: the first variant that is not ok, in registration order
    assert result["variant"] == "wrong_scale" and result["rejected_by"] == "tolerance"


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, dict[str, dict]]:
    """One folder evaluation of tests/hostile/: (exit status, file name -> its JSON line)."""
    cwd = tmp_path_factory.mktemp("hostile")
    proc = run_study(cwd, str(HOSTILE), *TINY, "device=cpu", module="study.evaluate", timeout=900)
    lines = judged(proc)
    assert len(lines) == len(HOSTILE_FILES), proc.stderr[-3000:]
    return proc.returncode, {Path(line["file"]).name: line for line in lines}


@pytest.mark.parametrize("name", HOSTILE_FILES)
def test_every_hostile_file_gets_the_verdict_a_study_gives(hostile, name):
    status, results = hostile
    assert status == 1
    result = results[name]
    verdicts = by_variant(result)
    for variant, got in verdicts.items():
        if variant in EXPECTED or variant in COMPLETE_PROOF:
            assert outcome(variant, got), got
        elif variant in HONEST:
            assert got["status"] == "ok", got
        else:  # the GPU-only file on the CPU: left out, as a study leaves it out
            assert name.startswith("gpu_") and got["status"] == "unsupported", got
    # a file is ok where every variant is honest or its cheat had no effect (was flagged)
    all_ok = all(v in HONEST or v in COMPLETE_PROOF for v in verdicts)
    assert (result["status"] == "ok") == all_ok


def test_usage_errors_exit_2_with_one_line(tmp_path, capsys):
    assert evaluate.main([]) == 2
    assert evaluate.main([str(tmp_path / "missing.py")]) == 2
    assert evaluate.main(["variant=no_such_variant"]) == 2
    assert evaluate.main(["variant=plain", "problem=no_such_problem"]) == 2
    assert evaluate.main(["variant=plain", "params.no_such_param=3"]) == 2
    assert evaluate.main([str(tmp_path)]) == 2  # a folder without candidates
    assert evaluate.main(["variant=plain", "mutations.layout=sideways"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 7 and all(line.startswith("error: ") for line in err), err
    assert evaluate.main(["-h"]) == 0


def test_a_file_that_does_not_import_is_a_failed_candidate(tmp_path, capsys):
    broken = tmp_path / "broken.py"
    broken.write_text("import torch\nraise RuntimeError('generated code is broken')\n")
    empty = tmp_path / "empty.py"
    empty.write_text("x = 1\n")
    for path, why in ((broken, "generated code is broken"), (empty, "registers no variant")):
        assert evaluate.main([str(path), *TINY]) == 1
        result = json.loads(capsys.readouterr().out)
        assert result["status"] == "failed" and why in result["error"], result


def test_the_interval_comes_from_the_worker_when_it_gives_one():
    base = {
        "status": "ok",
        "latency_us": 50.0,
        "latency_iqr_us": 5.0,
        "baseline_latency_us": 100.0,
        "baseline_latency_iqr_us": 10.0,
        "speedup": 2.0,
        "reps": 100,
    }
    assert evaluate.verdict(base | {"speedup_ci": [1.9, 2.2]})["speedup_ci"] == [1.9, 2.2]
    got = evaluate.verdict(base)
    # each log median's standard error: 1.2533 * log1p(0.1) / 1.349 / sqrt(100) = 0.0088549
    half = 1.959964 * (2 * 0.0088549**2) ** 0.5
    assert got["speedup_ci"] == pytest.approx(
        [2.0 * math.exp(-half), 2.0 * math.exp(half)], rel=1e-4
    )
    assert got["state"] == "COMPLETE" and got["speedup_ci_from"].startswith("median IQRs")
