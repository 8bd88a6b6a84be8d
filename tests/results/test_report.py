"""report.md and its figures after a real CPU study; the printed reproduce command reproduces."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import textwrap
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from study.results import dispatch, plots, report
from tests.conftest import TINY, chunk_plugin, run_study

PLUGIN = chunk_plugin("my_chunk") + textwrap.dedent("""
    @register("wrong_scale")
    def build_wrong(problem):
        def run(q, k, v):
            return torch.softmax((q @ k.transpose(-1, -2)).float(), -1).to(q.dtype) @ v
        return run

    @register("raises")
    def build_raises(problem):
        def run(q, k, v):
            print("about to explode")
            raise RuntimeError("kernel exploded")
        return run
""")


@dataclass
class Finished:
    cwd: Path
    url: str
    study: optuna.Study
    run_dir: Path
    stdout: str
    plugin: Path


def study_args(plugin: Path) -> list[str]:
    return [
        *TINY,
        f"space.plugins=[{plugin}]",
        "space.variants=[plain,my_chunk,wrong_scale,raises]",
        "space.mutations.layout=[bhsd,bshd_contiguous]",
        "space.mutations.threads=[0]",
        "sampler=grid",
        "study.n_trials=10",
    ]


_FINISHED: dict[str, Finished] = {}


@pytest.fixture(scope="session")
def finished_study(tmp_path_factory: pytest.TempPathFactory) -> Finished:
    """One real CPU study (10 distinct candidates: COMPLETE, PRUNED and FAIL), shared.

    Imported by test_dashboard and test_export too: each module gets its own fixture
    definition, so the study itself is cached here and run once per session. Tests must not
    add studies to its storage (copy the database first).
    """
    if "study" in _FINISHED:
        return _FINISHED["study"]
    cwd = tmp_path_factory.mktemp("finished")
    plugin = cwd / "plug.py"
    plugin.write_text(PLUGIN)
    proc = run_study(cwd, *study_args(plugin))
    assert proc.returncode == 0, proc.stderr[-3000:]
    url = f"sqlite:///{cwd / 'outputs' / 'studies.db'}"
    (summary,) = optuna.get_all_study_summaries(url)
    study = optuna.load_study(study_name=summary.study_name, storage=url)
    (run_dir,) = [p.parent for p in (cwd / "outputs" / "runs").glob("*/*/report.md")]
    _FINISHED["study"] = Finished(cwd, url, study, run_dir, proc.stdout, plugin)
    return _FINISHED["study"]


def test_study_has_every_state(finished_study):
    states = {t.state for t in finished_study.study.trials}
    assert states == {TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL}


def test_report_shows_measured_figures_only(finished_study):
    text = (finished_study.run_dir / "report.md").read_text()
    results = json.loads((finished_study.run_dir / "results.json").read_text())
    for section in ("## Environment", "## Problem", "## SDPA backends", "## Top candidates"):
        assert section in text
    assert "torch: " in text and "device: cpu" in text
    # every SDPA backend that runs on the CPU has a measured row, matching results.json
    rows = {r["variant"]: r for r in results["sdpa_backends"]}
    for name in ("sdpa", "sdpa_flash", "sdpa_math"):
        assert rows[name]["status"] == "ok", rows[name]
        assert f"| {name} | {rows[name]['latency_us']:.1f} |" in text
    assert rows["sdpa_cudnn"]["status"] == "n/a"
    # the default dispatch's backend, named by the profiler's ATen op
    assert results["sdpa_default"]["backend"] == "flash", results["sdpa_default"]
    assert "aten::_scaled_dot_product_flash_attention_for_cpu" in text
    # the top-k table quotes the trials' own attrs
    complete = report.measured_complete(finished_study.study)
    best = complete[0]
    assert results["top_k"][0]["trial"] == best.number
    assert f"| 1 | {best.number} | {best.user_attrs['label']} | {best.value:.1f} |" in text
    # the report, the console and the study open with the same verdict
    verdict = results["verdict"]
    assert text.splitlines()[2] == f"**{verdict['sentence']}**"
    assert finished_study.stdout.splitlines()[0] == verdict["sentence"]
    assert finished_study.study.user_attrs["verdict"] == verdict
    assert verdict["trial"] in [r["trial"] for r in results["top_k"][:2]]  # retime_top_k=2
    if verdict["kind"] == "winner":
        assert verdict["ci"][0] > 1 and verdict["retimed_ci"][0] > 1
    else:
        assert verdict["sentence"].startswith("default SDPA is the fastest correct choice here")


def test_figures_exist_and_are_not_empty(finished_study):
    results = json.loads((finished_study.run_dir / "results.json").read_text())
    files = results["figures"]["files"]
    for name in (plots.BEST_PNG, plots.VARIANT_PNG, plots.IMPORTANCE_PNG, plots.HTML):
        assert name in files, results["figures"]
        path = finished_study.run_dir / name
        assert path.stat().st_size > 5_000, name
    for name in (plots.BEST_PNG, plots.VARIANT_PNG, plots.IMPORTANCE_PNG):
        assert (finished_study.run_dir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"![{name}]({name})" in (finished_study.run_dir / "report.md").read_text()
    html = (finished_study.run_dir / plots.HTML).read_text()
    assert "plotly" in html and "Latency by variant" in html


def test_printed_command_reproduces_the_winner(finished_study, tmp_path):
    text = (finished_study.run_dir / "report.md").read_text()
    (command,) = re.findall(r"```\n(python -m study\.run .*)\n```", text)
    argv = shlex.split(command)
    assert argv[:3] == ["python", "-m", "study.run"]
    # in a copy of the storage: the shared study's database stays as it is for other tests
    (tmp_path / "outputs").mkdir()
    shutil.copy(finished_study.cwd / "outputs" / "studies.db", tmp_path / "outputs")
    proc = run_study(tmp_path, *argv[3:])
    assert proc.returncode == 0, proc.stderr[-3000:]
    number = finished_study.study.user_attrs["verdict"]["trial"]  # the winner or best alternative
    (winner,) = [t for t in finished_study.study.trials if t.number == number]
    name = [a for a in argv if a.startswith("study.name=")][-1].split("=", 1)[1]
    again = optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path}/outputs/studies.db")
    (trial,) = again.trials
    assert trial.state == TrialState.COMPLETE
    assert trial.user_attrs["spec"] == winner.user_attrs["spec"]
    assert again.user_attrs["problem"] == finished_study.study.user_attrs["problem"]


def test_reproduce_overrides_pin_params_and_drop_conflicts():
    spec = {"variant": "chunked", "params": {"chunk": 64}, "mutations": {"layout": "bshd"}}
    args = report.reproduce_overrides(
        ["problem.seq_q=64", "study.n_trials=30", "space.variants=[a,b]", "sampler=tpe"],
        spec,
        "small_cpu",
        "SIG",
    )
    assert args == [
        "problem=small_cpu",
        "problem.seq_q=64",
        "space.variants=[chunked]",
        "++space.params.chunked.chunk=[64]",
        "space.mutations.layout=[bshd]",
        "sampler=random",
        "study.n_trials=1",
        "study.name=reproduce-SIG",
    ]


@pytest.mark.parametrize(
    ("kernels_seen", "backend"),
    [
        (["void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<64>>"], "flash"),
        (
            ["fmha_cutlassF_f16_aligned_64x64_rf_sm80(PyTorchMemEffAttention::Attention)"],
            "efficient",
        ),
        (["cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_3"], "cudnn"),
        (["ampere_sgemm_128x64_nn", "softmax_warp_forward"], None),
    ],
)
def test_gpu_kernel_names_map_to_backends(kernels_seen, backend):
    assert dispatch.backend_from_kernels(kernels_seen) == backend


def test_plots_skip_what_cannot_be_drawn(tmp_path):
    study = optuna.create_study()
    study.add_trial(
        optuna.trial.create_trial(
            params={"variant": 0},
            distributions={"variant": optuna.distributions.IntDistribution(0, 1)},
            value=10.0,
            user_attrs={"variant": "plain", "measured": True, "baseline_latency_us": 12.0},
        )
    )
    out = plots.write_plots(study, tmp_path)
    assert plots.BEST_PNG in out["files"]
    assert "needs at least 3" in out["skipped"][plots.IMPORTANCE_PNG]
    assert plots.write_plots(optuna.create_study(), tmp_path)["files"] == []
