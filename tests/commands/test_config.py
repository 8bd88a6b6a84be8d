"""User mistakes in the config: one line, a non-zero exit, no traceback, no study created."""

from __future__ import annotations

import pytest

from study.config import ConfigError, expand_sweeps, load
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
