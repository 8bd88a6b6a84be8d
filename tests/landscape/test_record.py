"""`python -m study.record`: every candidate measured once per round, a table replay can search."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from study import landscape
from tests.conftest import TINY, run_study

# plain, chunked(16), chunked(32) on one layout and thread count: three candidates.
SPACE = [
    "space.variants=[plain,chunked]",
    "+space.params.chunked.chunk=[16,32]",
    "space.mutations.layout=[bhsd]",
    "space.mutations.threads=[0]",
    "bench.check_sets=1",
]


def test_record_two_rounds_then_replay_finds_the_recorded_optimum(tmp_path: Path) -> None:
    out = tmp_path / "landscape.csv"
    proc = run_study(tmp_path, *TINY, *SPACE, f"out={out}", "rounds=2", module="study.record")
    assert proc.returncode == 0, proc.stderr[-3000:]
    # each candidate measured once in each round, in a new order the second time
    assert proc.stderr.count("round 1/2 [") == 3 and proc.stderr.count("round 2/2 [") == 3
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 3
    assert sorted((r["variant"], r["chunked.chunk"]) for r in rows) == [
        ("chunked", "16"),
        ("chunked", "32"),
        ("plain", ""),
    ]
    assert all(r["status"] == "ok" and float(r["latency_us"]) > 0 for r in rows)
    assert all(float(r["latency_min_us"]) <= float(r["latency_us"]) for r in rows)
    # the value, as a live study's: one reference (the rows' median SDPA) / the paired speedup
    (reference,) = {r["reference_baseline_us"] for r in rows}
    baselines = sorted(float(r["baseline_latency_us"]) for r in rows)
    assert float(reference) == pytest.approx(baselines[1], abs=1e-4)
    for r in rows:
        expected = float(reference) / float(r["paired_speedup"])
        assert float(r["value_us"]) == pytest.approx(expected, rel=1e-4, abs=1e-4)
    provenance = json.loads(out.with_suffix(".json").read_text())
    assert provenance["rounds"] == 2 and provenance["rows"] == 3
    assert provenance["counts"] == {"ok": 3, "rejected": 0, "error": 0}
    assert provenance["problem"]["seq_q"] == 64 and provenance["env"]["device"] == "cpu"
    assert not out.with_suffix(".csv.partial").exists()

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    table = landscape.load_table(out)
    assert {"variant", "chunked.chunk"} <= set(table.columns) and table.size == 3
    result = landscape.run_study(table, "grid", seed=0)
    assert [t.state for t in result.study.trials] == [TrialState.COMPLETE] * 3
    assert table.value_column == "value_us"
    assert result.study.best_value == min(float(r["value_us"]) for r in rows)


def test_record_refuses_bad_rounds_in_one_line(tmp_path: Path) -> None:
    for bad in ("rounds=0", "rounds=two"):
        proc = run_study(
            tmp_path, *TINY, f"out={tmp_path / 'x.csv'}", bad, module="study.record", timeout=60
        )
        assert proc.returncode == 2, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and "rounds=" in proc.stderr
        assert not (tmp_path / "x.csv").exists()


def test_record_writes_a_kernel_tuner_cache_that_replays(tmp_path: Path) -> None:
    """format=kerneltuner (from the name .json.gz): four candidates, the incorrect one a failed
    entry with its reason; the cache replays as the rows it holds."""
    out = tmp_path / "landscape.json.gz"
    constant = Path(__file__).resolve().parents[1] / "hostile" / "constant.py"
    space = [a for a in SPACE if not a.startswith("space.variants")]
    proc = run_study(
        tmp_path,
        *TINY,
        *space,
        "space.variants=[plain,chunked,hostile_constant]",
        f"space.plugins=[{constant}]",
        f"out={out}",
        module="study.record",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    from study.landscape import kerneltuner

    data = kerneltuner.read_json(out)
    assert data["tune_params_keys"][0] == "variant" and data["objective"] == "time"
    cache = data["cache"]
    assert len(cache) == 4
    failed = [e for e in cache.values() if e["time"] == "RuntimeFailedConfig"]
    assert [e["variant"] for e in failed] == ["hostile_constant"]
    assert "tolerance" in failed[0]["kernel_study_note"]
    ok = [e for e in cache.values() if not isinstance(e["time"], str)]
    assert len(ok) == 3 and all(e["time"] > 0 for e in ok)
    provenance = data["kernel_study"]
    assert provenance["counts"] == {"ok": 3, "rejected": 1, "error": 0}
    assert provenance["problem"]["seq_q"] == 64
    assert not out.with_suffix(".json").exists() and not (tmp_path / "landscape.json").exists()

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    table = landscape.load_table(out)
    assert table.size == 4
    result = landscape.run_study(table, "grid", seed=0)
    states = sorted(t.state.name for t in result.study.trials)
    assert states == ["COMPLETE", "COMPLETE", "COMPLETE", "PRUNED"]
    assert result.study.best_value == pytest.approx(min(e["time"] for e in ok) * 1000.0)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["out=x.csv", "format=kerneltuner"], "does not fit format=kerneltuner"),
        (["out=x.json", "format=csv"], "does not fit format=csv"),
        (["out=x.json", "format=xml"], "format=xml is not known"),
        (["out=x.txt"], "must name a .csv file or a Kernel Tuner cache"),
    ],
)
def test_record_refuses_a_format_that_does_not_fit_in_one_line(
    tmp_path: Path, args: list[str], says: str
) -> None:
    proc = run_study(tmp_path, *TINY, *args, module="study.record", timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and says in proc.stderr, proc.stderr
