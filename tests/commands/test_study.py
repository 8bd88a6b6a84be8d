"""Real studies in subprocesses: exact trial counts and states, resume, plugins, duplicates."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tests.conftest import TINY, chunk_plugin, load_only_study, run_study

COMPLETE_ATTRS = (
    "variant",
    "latency_us",
    "latency_iqr_us",
    "baseline_latency_us",
    "speedup",
    "tflops",
    "rel_err",
    "value_us",
    "reference_baseline_us",
    "paired_speedup",
    "speedup_ci",
    "baseline_order_ratio",
    "timing",
)


def _states(study: optuna.Study) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in study.trials:
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


def _run_folders(cwd: Path) -> list[Path]:
    return sorted(p.parent for p in (cwd / "outputs" / "runs").glob("*/*/report.md"))


def test_study_runs_resumes_and_records(tmp_path):
    # the default CPU space: compiled variants, each re-timed in its own process, recompile
    proc = run_study(tmp_path, *TINY, "sampler=random", "study.n_trials=8", "seed=3", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = load_only_study(tmp_path)
    assert len(study.trials) == 8
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.trials), _states(
        study
    )
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert complete
    # one reference per device model and timing: the first measured trial's fastest SDPA call
    ((key, reference),) = study.user_attrs["reference_baseline_us"].items()
    assert key.endswith("/per_call")
    first = min((t for t in complete if t.user_attrs["measured"]), key=lambda t: t.number)
    assert reference == first.user_attrs["baseline_latency_min_us"]
    for t in complete:
        for name in COMPLETE_ATTRS:
            assert name in t.user_attrs, (t.number, name)
        # the value: the study's reference SDPA latency / the trial's paired speedup
        attrs = t.user_attrs
        assert attrs["reference_baseline_us"] == reference > 0
        assert t.value == attrs["value_us"] == pytest.approx(reference / attrs["paired_speedup"])
        assert attrs["speedup"] == pytest.approx(attrs["baseline_latency_us"] / attrs["latency_us"])
        lo, hi = attrs["speedup_ci"]
        assert lo <= attrs["paired_speedup"] <= hi
        assert t.user_attrs["rel_err"] < 1e-3
    for t in study.trials:
        assert "variant" in t.user_attrs
        if t.state == TrialState.PRUNED:
            assert t.user_attrs["rejected_by"]
    # the environment and problem are stored with the study
    assert study.user_attrs["env"]["device"] == "cpu"
    assert study.user_attrs["problem"]["seq_q"] == 64
    # terminal table and run folder
    assert "speedup" in proc.stdout and "| 1 |" in proc.stdout
    (folder,) = _run_folders(tmp_path)
    results = json.loads((folder / "results.json").read_text())
    assert results["study"] == study.study_name
    assert results["top_k"][0]["value_us"] == min(
        t.value for t in complete if t.user_attrs["measured"]
    )
    assert results["verdict"]["sentence"] == proc.stdout.splitlines()[0]
    assert results["verdict"]["kind"] in ("winner", "keep_sdpa")
    assert len(results["retimed"]) == 2  # study.retime_top_k=2
    for again in results["retimed"].values():
        assert again["rounds"] == 3 and again["status"] == "ok", again
        assert len(again["round_speedups"]) == 3
    assert (folder / "config.yaml").read_text().count("seq_q: 64") == 1
    assert "## Top candidates" in (folder / "report.md").read_text()

    again = run_study(tmp_path, *TINY, "sampler=random", "study.n_trials=3", "seed=4")
    assert again.returncode == 0, again.stderr[-3000:]
    study = load_only_study(tmp_path)
    assert len(study.trials) == 11
    assert len(_run_folders(tmp_path)) == 2


def test_plugin_variant_is_searched(tmp_path):
    plugin = tmp_path / "my_attention.py"
    plugin.write_text(chunk_plugin("my_variant"))
    proc = run_study(
        tmp_path,
        *TINY,
        f"space.plugins=[{plugin}]",
        "space.variants=[my_variant]",
        "sampler=grid",
        "study.n_trials=10",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = load_only_study(tmp_path)
    # grid: 2 chunks x 3 layouts x 2 thread counts = 12 distinct candidates, 10 asked for
    assert len(study.trials) == 10
    assert {t.user_attrs["variant"] for t in study.trials} == {"my_variant"}
    assert all(t.state == TrialState.COMPLETE for t in study.trials), _states(study)
    assert len({t.user_attrs["spec_key"] for t in study.trials}) == 10


def test_grid_measures_each_candidate_once_then_stops(tmp_path):
    proc = run_study(
        tmp_path,
        *TINY,
        "space.variants=[chunked,plain]",
        "+space.params.chunked.chunk=[16,32]",
        "space.mutations.layout=[bhsd]",
        "space.mutations.threads=[0]",
        "sampler=grid",
        "study.n_trials=7",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = load_only_study(tmp_path)
    assert len(study.trials) == 3  # chunk 16, chunk 32, plain: then the grid stops the study
    assert _states(study) == {"COMPLETE": 3}
    assert sorted(t.user_attrs["label"] for t in study.trials) == [
        "chunked(chunk=16)",
        "chunked(chunk=32)",
        "plain",
    ]


def test_same_candidate_is_not_measured_twice(tmp_path):
    proc = run_study(
        tmp_path,
        *TINY,
        "space.variants=[plain]",
        "space.mutations.layout=[bhsd]",
        "space.mutations.threads=[0]",
        "sampler=random",
        "study.n_trials=4",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = load_only_study(tmp_path)
    assert len(study.trials) == 4
    measured = [t for t in study.trials if t.user_attrs["measured"]]
    assert len(measured) == 1
    copies = [t for t in study.trials if not t.user_attrs["measured"]]
    assert [t.user_attrs["duplicate_of"] for t in copies] == [measured[0].number] * 3
    assert {t.value for t in study.trials} == {measured[0].value}


def test_resume_from_another_environment_is_refused(tmp_path):
    args = [*TINY, "space.variants=[plain]", "study.n_trials=1", "study.name=pinned"]
    assert run_study(tmp_path, *args).returncode == 0
    study = load_only_study(tmp_path)
    env = dict(study.user_attrs["env"])
    env["device_name"] = "NVIDIA H100 80GB HBM3"
    study.set_user_attr("env", env)
    refused = run_study(tmp_path, *args)
    assert refused.returncode == 2
    assert refused.stderr.strip().startswith(
        "error: study 'pinned' was measured in another environment"
    )
    assert len(refused.stderr.strip().splitlines()) == 1
    assert len(load_only_study(tmp_path).trials) == 1
    allowed = run_study(tmp_path, *args, "study.allow_env_change=true")
    assert allowed.returncode == 0, allowed.stderr[-2000:]
    assert len(load_only_study(tmp_path).trials) == 2


def test_incorrect_and_crashing_plugins_cost_one_trial_each(tmp_path):
    plugin = tmp_path / "bad.py"
    plugin.write_text(
        textwrap.dedent("""
        import torch
        from kernels import register

        @register("wrong_scale")
        def build_wrong(problem):
            def run(q, k, v):
                w = torch.softmax((q @ k.transpose(-1, -2)).float(), -1).to(q.dtype)
                return w @ v
            return run

        @register("raises")
        def build_raises(problem):
            def run(q, k, v):
                raise RuntimeError("kernel exploded")
            return run

        @register("honest")
        def build_honest(problem):
            def run(q, k, v):
                sdpa = torch.nn.functional.scaled_dot_product_attention
                return sdpa(q, k, v, scale=problem.scale)
            return run
    """)
    )
    proc = run_study(
        tmp_path,
        *TINY,
        f"space.plugins=[{plugin}]",
        "space.variants=[wrong_scale,raises,honest]",
        "space.mutations.layout=[bhsd]",
        "space.mutations.threads=[0]",
        "sampler=grid",
        "study.n_trials=3",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = load_only_study(tmp_path)
    by_variant = {t.user_attrs["variant"]: t for t in study.trials}
    assert by_variant["wrong_scale"].state == TrialState.PRUNED
    assert by_variant["wrong_scale"].user_attrs["rejected_by"] == "tolerance"
    assert by_variant["raises"].state == TrialState.FAIL
    assert "kernel exploded" in by_variant["raises"].user_attrs["error"]
    assert by_variant["honest"].state == TrialState.COMPLETE
