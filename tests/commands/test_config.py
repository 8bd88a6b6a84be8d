"""User mistakes in the config: one line, a non-zero exit, no traceback, no study created."""

from __future__ import annotations

import optuna
import pytest

import kernels
from kernels import Problem
from study.config import ConfigError, expand_sweeps, load
from study.objective import COMPILE_TAG, Objective, call_timeout
from study.space import build_space
from tests.conftest import run_study


@pytest.mark.parametrize(
    "override,expected",
    [
        ("sampler=nope", "sampler=nope is not a known option; choose one of: "),
        ("study.n_trials=-3", "study.n_trials must be >= 1, got -3"),
        ("study.n_trials=abc", "bad value for study.n_trials"),
        ("problem=huge", "problem=huge is not a known option"),
        ("foo=1", "unknown config key 'foo'"),
        ("+foo=1", "unknown config key 'foo'"),
        ("study.nope=2", "unknown config key 'study.nope'"),
        ("problem.causal=maybe", "bad value for problem.causal"),
        ("problem.heads_kv=3", "must be a multiple of problem.heads_kv"),
        ("problem.dtype=int8", "problem.dtype=int8 is not valid"),
        ("device=gpu", "device=gpu is not valid"),
        ("bench.cache=lukewarm", "bench.cache=lukewarm is not valid"),
        ("sampler.offspring=0", "sampler.offspring must be >= 1, got 0"),
        ("sampler.crossover_prob=1.5", "sampler.crossover_prob must be in [0, 1], got 1.5"),
    ],
)
def test_bad_config_is_one_clear_line(override, expected):
    with pytest.raises(ConfigError) as info:
        load([override])
    message = str(info.value)
    assert expected in message
    assert "\n" not in message


def test_auto_resolves_against_the_cpu():
    cfg, device = load([])
    assert device == "cpu"
    assert cfg.problem.name == "small_cpu" and cfg.problem.dtype == "float32"
    assert cfg.space.name == "cpu"
    cfg, _ = load(["problem=decode", "problem.seq_kv=256"])
    assert (cfg.problem.name, cfg.problem.seq_q, cfg.problem.seq_kv) == ("decode", 1, 256)


def test_sweeps_expand_to_every_combination():
    combos = expand_sweeps(["problem=small,decode", "seed=1,2", "bench=quick"])
    assert len(combos) == 4
    assert ["problem=decode", "seed=2", "bench=quick"] in combos


@pytest.mark.parametrize("override", ["sampler=nope", "study.n_trials=-3", "space.variants=[nope]"])
def test_cli_errors_exit_non_zero_without_traceback(tmp_path, override):
    proc = run_study(tmp_path, override, "bench=quick", timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    db = tmp_path / "outputs" / "studies.db"
    if db.exists():  # the space is checked after the storage path exists: no study in it
        import optuna

        assert optuna.get_all_study_summaries(f"sqlite:///{db}") == []


def test_build_budget_is_a_worker_key_added_for_compile_variants() -> None:
    """`worker.build_timeout_s` (default 900) is added to `worker.timeout_s` for variants tagged
    `compile` (a torch.compile build can outlast a trial's limit alone), for no other variant."""
    cfg, _ = load([])
    assert (cfg.worker.timeout_s, cfg.worker.build_timeout_s) == (120, 900)
    cfg, _ = load(["worker.build_timeout_s=30"])
    assert cfg.worker.build_timeout_s == 30
    with pytest.raises(ConfigError, match="worker.build_timeout_s must be >= 0, got -1"):
        load(["worker.build_timeout_s=-1"])
    registry = kernels.variants()
    compiling = {name for name, v in registry.items() if COMPILE_TAG in v.tags}
    assert {"compiled_plain", "compiled_chunked", "flex"} <= compiling
    assert not compiling & {"plain", "chunked", "grouped", "sdpa", "triton_flash"}

    class Recording:
        """Answers evaluate requests at once; records each request's limit."""

        limits: list[tuple[str, float]] = []

        def call(self, kind: str, payload: dict, timeout_s: float) -> dict:
            self.limits.append((payload["candidate"]["variant"], timeout_s))
            pair = {"paired_speedup": 1.0, "speedup_ci": [1.0, 1.0], "timing": "per_call"}
            return {"status": "ok", "latency_us": 1.0, "baseline_latency_min_us": 1.0} | pair

    problem = Problem(1, 2, 2, 16, 16, 8, dtype="float32")
    space_cfg = {
        "variants": ["plain", "compiled_plain"],
        "params": {"compiled_plain": {"mode": ["default"]}},
    }
    space = build_space(problem, space_cfg, registry, lambda names: dict.fromkeys(names))
    worker = Recording()
    objective = Objective(space, worker, problem, {}, 0, 120.0, build_timeout_s=600.0)
    study = optuna.create_study()
    for index in (0, 1):
        study.enqueue_trial(space.encode(space.candidates()[index]))
    study.optimize(objective, n_trials=2)
    assert sorted(worker.limits) == [("compiled_plain", 720.0), ("plain", 120.0)]
    assert call_timeout(("compile",), 120.0, 600.0) == 720.0
    assert call_timeout(("compiled", "out"), 120.0, 600.0) == 120.0
