"""Kernel Tuner cache files as replay tables: a tiny hand-made cache whose failed rows, missing
configurations and optimum are known, read and replayed exactly."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from study import landscape, replay
from study.landscape import kerneltuner

# block_size_x x use_shmem is 3 x 2 = 6 configurations; (64, 1) was excluded by the tuner's
# restrictions (not in the cache), (16, 1) failed at run time, (64, 0) did not compile. The
# optimum is (32, 1) at 0.0125 ms = 12.5 us. Keys are the values joined with commas, as Kernel
# Tuner writes them; the entries carry the values typed, and other figures replay ignores.
ENTRIES = {
    "16,0": 0.0400,
    "16,1": "RuntimeFailedConfig",
    "32,0": 0.0200,
    "32,1": 0.0125,
    "64,0": "CompilationFailedConfig",
}


def cache_dict() -> dict:
    cache = {}
    for key, time in ENTRIES.items():
        bx, shmem = (int(v) for v in key.split(","))
        cache[key] = {
            "block_size_x": bx,
            "use_shmem": shmem,
            "time": time,
            "times": [time] * 3 if not isinstance(time, str) else time,
            "compile_time": 500.0,
            "GFLOP/s": 1.0,
        }
    return {
        "device_name": "NVIDIA Test",
        "kernel_name": "tiny_kernel",
        "problem_size": [1024],
        "tune_params_keys": ["block_size_x", "use_shmem"],
        "tune_params": {"block_size_x": [16, 32, 64], "use_shmem": [0, 1]},
        "objective": "time",
        "cache": cache,
    }


@pytest.fixture(autouse=True)
def _quiet() -> None:
    optuna.logging.set_verbosity(optuna.logging.ERROR)


@pytest.fixture
def cache_gz(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.json.gz"
    path.write_bytes(gzip.compress(json.dumps(cache_dict()).encode()))
    return path


def test_a_cache_reads_as_a_table(cache_gz: Path, tmp_path: Path) -> None:
    table = landscape.load_table(cache_gz)
    assert table.columns == ["block_size_x", "use_shmem"]
    assert table.values == {"block_size_x": [16, 32, 64], "use_shmem": [0, 1]}
    assert table.size == 5
    assert table.index.tolist() == [[0, 0], [0, 1], [1, 0], [1, 1], [2, 0]]
    assert table.optimum == 12.5  # 0.0125 ms in us
    assert table.latency[0] == 40.0 and table.latency[2] == 20.0
    assert [r for r in range(5) if math.isnan(table.latency[r])] == [1, 4]
    assert table.notes[1] == "RuntimeFailedConfig" and table.notes[4] == "CompilationFailedConfig"
    assert table.label(3) == "block_size_x=32, use_shmem=1"
    plain = tmp_path / "tiny.json"  # the same cache, not gzipped: the same table
    plain.write_text(json.dumps(cache_dict()))
    again = landscape.load_table(plain)
    assert again.index.tolist() == table.index.tolist()
    assert np.array_equal(np.isnan(again.latency), np.isnan(table.latency))
    assert np.nanmax(np.abs(again.latency - table.latency)) == 0.0


def test_a_cache_replays_every_configuration_once_with_exact_states(cache_gz: Path) -> None:
    table = landscape.load_table(cache_gz)
    space = landscape.ReplaySpace(table)
    assert space.lookup({"block_size_x": 2, "use_shmem": 1}) is None  # excluded: not in the space
    result = landscape.run_study(table, "grid", seed=1, space=space)
    trials = result.study.trials
    assert len(trials) == 5 == len(result.trace)
    by_row = {t.user_attrs["row"]: t for t in trials}
    assert sorted(by_row) == [0, 1, 2, 3, 4]
    assert {r for r, t in by_row.items() if t.state == TrialState.PRUNED} == {1, 4}
    assert by_row[1].user_attrs["rejected_by"] == "recorded_failure"
    assert by_row[1].user_attrs["detail"] == "RuntimeFailedConfig"
    assert by_row[4].user_attrs["detail"] == "CompilationFailedConfig"
    assert result.study.best_value == 12.5
    assert result.study.best_trial.user_attrs["row"] == 3


@pytest.mark.parametrize("name", ["ga", "cmaes", "random"])
def test_samplers_find_the_optimum_of_a_cache_in_its_rows(cache_gz: Path, name: str) -> None:
    table = landscape.load_table(cache_gz)
    result = landscape.run_study(table, name, seed=2)
    assert len(result.trace) == 5  # every row once, then the study stops
    assert sorted(t.user_attrs["row"] for t in result.study.trials if "row" in t.user_attrs) == [
        0,
        1,
        2,
        3,
        4,
    ]
    assert result.study.best_value == 12.5


def test_the_cli_replays_a_cache(cache_gz: Path, tmp_path: Path, capsys) -> None:
    url = f"sqlite:///{tmp_path / 'kt.db'}"
    args = [f"table={cache_gz}", "sampler=ga", f"storage.url={url}", "budget=5"]
    assert replay.main(args) == 0
    out = capsys.readouterr().out
    assert "5 evaluations (distinct rows), best 12.5 us (block_size_x=32, use_shmem=1)" in out
    study = optuna.load_study(study_name="replay-tiny.json-ga", storage=url)
    assert len({t.user_attrs["row"] for t in study.trials}) == 5


@pytest.mark.parametrize(
    "content, needle",
    [
        (b"not json", "cannot read it as JSON"),
        (json.dumps({"a": 1}).encode(), "is not a Kernel Tuner cache"),
        (
            json.dumps({"tune_params_keys": ["x"], "cache": {"1": {"x": 1}}}).encode(),
            "has no 'time'",
        ),
        (
            json.dumps({"tune_params_keys": ["x"], "cache": {"1,2": {"time": 1.0}}}).encode(),
            "has 2 values",
        ),
        (
            json.dumps(
                {"tune_params_keys": ["x"], "cache": {"1": {"time": "RuntimeFailedConfig"}}}
            ).encode(),
            "every configuration failed",
        ),
    ],
)
def test_a_bad_cache_is_one_line_and_exit_2(
    tmp_path: Path, capsys, content: bytes, needle: str
) -> None:
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    assert replay.main([f"table={path}"]) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1


def test_cache_paths_are_recognised_by_name() -> None:
    assert kerneltuner.is_cache_path("a/b.json") and kerneltuner.is_cache_path("B.JSON.GZ")
    assert not kerneltuner.is_cache_path("a.csv") and not kerneltuner.is_cache_path("a.gz")


def test_a_table_written_as_a_cache_reads_back_as_the_same_table(tmp_path: Path) -> None:
    """Our CSV (one recorded row failed, inert cells) -> a cache -> the same rows and values;
    an inert cell becomes the value "-" (Kernel Tuner has no inert parameters)."""
    csv_path = tmp_path / "t.csv"
    csv_path.write_text(
        "variant,chunked.chunk,mut.threads,value_us,latency_us,status,rejected_by\n"
        "plain,,0,41.5,40.0,ok,\n"
        "chunked,16,0,30.25,31.0,ok,\n"
        "chunked,32,1,,,rejected,tolerance\n"
        "chunked,32,0,22.0,23.5,ok,\n"
    )
    table = landscape.load_table(csv_path)
    for name in ("t.json", "t.json.gz"):
        out = tmp_path / name
        kerneltuner.write(out, kerneltuner.from_table(table, "cpu", "attention x", [1], {"a": 1}))
        data = kerneltuner.read_json(out)
        assert (out.read_bytes()[:2] == b"\x1f\x8b") == name.endswith(".gz")
        assert data["tune_params_keys"] == ["variant", "chunked.chunk", "mut.threads"]
        assert data["tune_params"]["chunked.chunk"] == [16, 32, "-"]
        assert data["kernel_study"] == {"a": 1} and data["objective"] == "time"
        entry = data["cache"]["chunked,32,1"]
        assert entry["time"] == "RuntimeFailedConfig" and "tolerance" in entry["kernel_study_note"]
        assert data["cache"]["plain,-,0"]["time"] == pytest.approx(0.0415)  # value_us, in ms
        back = landscape.load_table(out)
        assert back.columns == table.columns and back.size == 4
        assert np.array_equal(np.isnan(back.latency), np.isnan(table.latency))
        assert np.nanmax(np.abs(back.latency - table.latency)) < 1e-9
        assert [back.label(r) for r in range(4)] == [
            "variant=plain, chunked.chunk=-, mut.threads=0",
            "variant=chunked, chunked.chunk=16, mut.threads=0",
            "variant=chunked, chunked.chunk=32, mut.threads=1",
            "variant=chunked, chunked.chunk=32, mut.threads=0",
        ]
        assert not (tmp_path / (name + ".partial")).exists()
