"""Replay mechanics, checked exactly on tiny hand-made tables whose optimum and counts are known."""

from __future__ import annotations

import itertools
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from study import landscape, replay
from study.search import make_sampler
from study.search.callbacks import Patience

ROOT = Path(__file__).resolve().parents[2]  # the repository

# 8 rows: 6 correct (optimum 50 us, row 4), 2 failed; `chunked.chunk` is inert for plain/sdpa.
TINY = """variant,chunked.chunk,mut.layout,latency_us,status
plain,,bhsd,100,ok
plain,,bshd,120,ok
chunked,64,bhsd,80,ok
chunked,64,bshd,,rejected
chunked,128,bhsd,50,ok
chunked,128,bshd,70,ok
sdpa,,bhsd,60,ok
sdpa,,bshd,,error
"""
# A full product of two numeric columns with one hole (a=2, b=20 is not in the table).
HOLE = """a,b,latency_us
1,10,5
1,20,4
2,10,3
"""


@pytest.fixture(autouse=True)
def _quiet() -> None:
    optuna.logging.set_verbosity(optuna.logging.ERROR)


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.csv"
    path.write_text(TINY)
    return path


def test_space_is_inferred_from_the_table(tiny: Path) -> None:
    table = landscape.load_table(tiny)
    assert table.columns == ["variant", "chunked.chunk", "mut.layout"]
    assert table.values["variant"] == ["chunked", "plain", "sdpa"]
    assert table.values["chunked.chunk"] == [64, 128]  # numeric order, not text order
    assert table.size == 8 and table.optimum == 50.0
    space = landscape.ReplaySpace(table)
    dists = space.distributions()
    assert {n: (d.low, d.high) for n, d in dists.items()} == {
        "variant": (0, 2),
        "chunked.chunk": (0, 1),
        "mut.layout": (0, 1),
    }
    # an inert dimension matches whatever the trial proposes there
    plain = {"variant": 1, "mut.layout": 0}
    assert space.lookup(plain | {"chunked.chunk": 0}) == 0
    assert space.lookup(plain | {"chunked.chunk": 1}) == 0
    assert space.lookup({"variant": 0, "chunked.chunk": 1, "mut.layout": 0}) == 4


def test_grid_visits_every_row_once_with_exact_states(tiny: Path) -> None:
    table = landscape.load_table(tiny)
    result = landscape.run_study(table, "grid", seed=3)
    trials = result.study.trials
    assert len(trials) == 8 and result.trials == 8
    rows = [t.user_attrs["row"] for t in trials]
    assert sorted(rows) == list(range(8))
    assert len(result.trace) == 8
    states = {t.user_attrs["row"]: t.state for t in trials}
    assert sorted(r for r, s in states.items() if s == TrialState.PRUNED) == [3, 7]
    assert sum(s == TrialState.COMPLETE for s in states.values()) == 6
    for t in trials:
        if t.state == TrialState.PRUNED:
            assert t.user_attrs["rejected_by"] == "recorded_failure"
            assert "latency_us" not in t.user_attrs
        else:
            assert t.user_attrs["latency_us"] == t.value == table.latency[t.user_attrs["row"]]
        assert t.user_attrs["variant"] == table.variant[t.user_attrs["row"]]
    assert result.study.best_value == 50.0 == table.optimum


def test_budget_counts_distinct_rows_not_trials(tiny: Path) -> None:
    table = landscape.load_table(tiny)
    result = landscape.run_study(table, "grid", seed=0, budget=3)
    assert len(result.study.trials) == 3 and len(result.trace) == 3
    # a sampler that repeats configurations: trials go on, evaluations count distinct rows only
    result = landscape.run_study(table, "nsga2", seed=0, budget=5, max_trials=400)
    measured = [t for t in result.study.trials if t.user_attrs.get("measured")]
    distinct = {t.user_attrs["row"] for t in result.study.trials if "row" in t.user_attrs}
    assert len(measured) == len(distinct) == len(result.trace) == 5
    assert result.study.trials[-1].user_attrs["evaluations"] == 5
    for t in result.study.trials:
        if t.user_attrs.get("measured") is False and "row" in t.user_attrs:
            assert t.user_attrs["duplicate_of"] < t.number


def test_a_point_missing_from_the_table_is_pruned_and_costs_nothing(tmp_path: Path) -> None:
    path = tmp_path / "hole.csv"
    path.write_text(HOLE)
    table = landscape.load_table(path)
    space = landscape.ReplaySpace(table)
    study = optuna.create_study(sampler=optuna.samplers.GridSampler({"a": [1], "b": [1]}))
    objective = landscape.ReplayObjective(space)
    study.optimize(objective, n_trials=1)
    trial = study.trials[0]
    assert trial.state == TrialState.PRUNED
    assert trial.user_attrs["rejected_by"] == "not_in_table"
    assert objective.evaluations == 0


@pytest.mark.parametrize("name", ["cmaes", "catcma", "ga", "ga_plain", "tpe", "random"])
def test_samplers_never_spend_a_trial_on_a_known_row(tiny: Path, name: str) -> None:
    table = landscape.load_table(tiny)
    result = landscape.run_study(table, name, seed=5)
    trials = result.study.trials
    assert len(trials) == 8 == len(result.trace)  # every row exactly once, then the study stops
    assert sorted(t.user_attrs["row"] for t in trials) == list(range(8))
    assert result.study.best_value == 50.0


def test_patience_stops_after_exactly_n_non_improving_trials() -> None:
    values = [5.0, 4.0, 6.0, None, 7.0, 3.0, 1.0]  # None: pruned, counts as no improvement
    study = optuna.create_study()

    def objective(trial: optuna.Trial) -> float:
        value = values[trial.number]
        if value is None:
            raise optuna.TrialPruned()
        return value

    study.optimize(objective, n_trials=len(values), callbacks=[Patience(3)])
    assert len(study.trials) == 5  # 5 and 4 improve; 6, pruned, 7: three without improvement


def test_patience_in_replay_matches_the_grid_order(tiny: Path) -> None:
    table = landscape.load_table(tiny)
    space = landscape.ReplaySpace(table)
    order = make_sampler({"name": "grid"}, space, 11)._order  # the grid's visiting order
    latencies = [table.latency[space.lookup(e)] for e in order]
    best, since, expected = math.inf, 0, len(latencies)
    for i, v in enumerate(latencies):
        if not math.isnan(v) and v < best:
            best, since = v, 0
        else:
            since += 1
            if since == 2:
                expected = i + 1
                break
    result = landscape.run_study(table, "grid", seed=11, patience=2)
    assert len(result.study.trials) == expected


def test_expected_random_best_is_exact(tiny: Path) -> None:
    table = landscape.load_table(tiny)
    worst = table.worst
    values = [worst if math.isnan(v) else v for v in table.latency]
    for k in (1, 2, 4, 8):
        combos = list(itertools.combinations(values, k))
        brute = sum(min(c) for c in combos) / len(combos)
        assert landscape.expected_random_best(table.latency, k) == pytest.approx(brute, rel=1e-12)
    assert landscape.score(50.0, 70.0, 50.0) == 1.0
    assert landscape.score(70.0, 70.0, 50.0) == 0.0


def test_compare_reports_and_plots(
    tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out, png = tmp_path / "cmp.md", tmp_path / "cmp.png"
    code = replay.main(
        [f"table={tiny}", "sampler=[grid,random]", "seeds=4", f"out={out}", f"plot={png}"]
    )
    assert code == 0
    text = out.read_text()
    assert "| grid |" in text and "| random |" in text
    assert png.stat().st_size > 1000
    assert (tmp_path / "cmp.json").is_file()


def test_single_mode_uses_the_configured_storage_and_resumes(tiny: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'replay.db'}"
    args = [f"table={tiny}", "sampler=grid", f"storage.url={url}", "study.name=r", "budget=3"]
    assert replay.main(args) == 0
    assert replay.main(args[:-1] + ["budget=5"]) == 0  # resumes: 5 rows evaluated in all
    study = optuna.load_study(study_name="r", storage=url)
    assert len(study.trials) == 5
    assert len({t.user_attrs["row"] for t in study.trials}) == 5


@pytest.mark.parametrize(
    "args, needle",
    [
        ([], "table=PATH.csv is required"),
        (["table=/nonexistent/t.csv"], "no such file"),
        (["table={nolat}"], "no latency_us column"),
        (["table={tiny}", "sampler=annealing"], "not a known option"),
        (["table={tiny}", "budget=0"], "budget must be >= 1"),
        (["table={tiny}", "budget=-3"], "budget must be >= 1"),
        (["table={tiny}", "seeds=x"], "not an integer"),
        (["table={tiny}", "colour=blue"], "unknown key"),
        (["table={tiny}", "sampler=ga", "sampler.offspring=0"], "sampler.offspring must be >= 1"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture, args: list[str], needle: str
) -> None:
    nolat = tmp_path / "nolat.csv"
    nolat.write_text("a,b\n1,2\n")
    args = [a.format(tiny=tiny, nolat=nolat) for a in args]
    assert replay.main(args) == 2
    err = capsys.readouterr().err
    assert needle in err
    assert len(err.strip().splitlines()) == 1
    assert "Traceback" not in err


def test_cli_bad_input_exits_2_without_traceback(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "study.replay", f"table={tmp_path / 'missing.csv'}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "no such file" in proc.stderr


def test_ambiguous_and_duplicate_tables_are_refused(tmp_path: Path) -> None:
    dup = tmp_path / "dup.csv"
    dup.write_text("a,latency_us\n1,5\n1,6\n")
    with pytest.raises(landscape.ReplayError, match="same configuration"):
        landscape.ReplaySpace(landscape.load_table(dup))
    amb = tmp_path / "amb.csv"
    amb.write_text("a,b,latency_us\n1,,5\n1,0,6\n")
    with pytest.raises(landscape.ReplayError, match="ambiguous"):
        landscape.ReplaySpace(landscape.load_table(amb))


def test_synthetic_landscapes_are_valid_tables(tmp_path: Path) -> None:
    """bench/synthetic_landscapes.py draws tables replay accepts: distinct configurations,
    in the 60..1000-row window, some failed rows and a unique-enough optimum."""
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import synthetic_landscapes as synth
    finally:
        sys.path.remove(str(ROOT / "bench"))
    paths = synth.write_landscapes(4, tmp_path)
    assert len(paths) == 4
    for path in paths:
        table = landscape.load_table(path)
        space = landscape.ReplaySpace(table)  # refuses duplicate or ambiguous rows
        assert synth.MIN_ROWS <= table.size <= synth.MAX_ROWS
        assert len(space.candidates()) == table.size
        assert 0 < np.isnan(table.latency).sum() < table.size
        assert table.values["variant"][0] == "v0"
        for candidate in space.candidates()[:50]:  # a row's active dimensions: its filled cells
            cells = zip(table.columns, table.index[candidate.row], strict=True)
            filled = {c for c, i in cells if i >= 0}
            assert set(space.active_encoding(candidate)) == filled
            assert any(c.startswith("mut.") for c in filled) and "variant" in filled


def test_replay_minimises_the_paired_value_where_the_table_has_it(tmp_path: Path) -> None:
    """Row 0 ran in a slow minute (raw latency 90, SDPA beside it 180: 2x SDPA), row 1 in a
    quiet one (latency 60, SDPA 40: 0.67x): the value ranks row 0 first, as a live study does."""
    path = tmp_path / "paired.csv"
    path.write_text(
        "a,value_us,reference_baseline_us,paired_speedup,latency_us,baseline_latency_us,status\n"
        "1,50.0,100.0,2.0,90,180,ok\n"
        "2,150.0,100.0,0.666667,60,40,ok\n"
        "3,,,,,,rejected\n"
    )
    table = landscape.load_table(path)
    assert table.columns == ["a"] and table.value_column == "value_us"
    assert table.optimum == 50.0 and math.isnan(table.latency[2])
    result = landscape.run_study(table, "grid", seed=0)
    best = result.study.best_trial
    assert best.user_attrs["row"] == 0 and best.user_attrs["value_us"] == best.value == 50.0
    assert "latency_us" not in best.user_attrs


def test_expected_random_best_closed_form_is_exact_and_fast() -> None:
    """The closed form against the big-integer binomials on 300 rows, and every k of a
    4,092-row table in well under a second (the old sum took seconds per k there)."""
    import time

    rng = np.random.default_rng(0)
    values = np.exp(rng.normal(size=300))
    values[::17] = np.nan
    worst = float(np.nanmax(values))
    ordered = np.sort(np.where(np.isnan(values), worst, values))
    for k in (1, 2, 7, 60, 150, 299, 300):
        n = len(ordered)
        exact = sum(
            float(ordered[i - 1]) * math.comb(n - i, k - 1) / math.comb(n, k)
            for i in range(1, n - k + 2)
        )
        assert landscape.expected_random_best(values, k) == pytest.approx(exact, rel=1e-12)
    big = np.exp(rng.normal(size=4092))
    started = time.perf_counter()
    curve = [landscape.expected_random_best(big, k) for k in range(1, 401)]
    assert time.perf_counter() - started < 2.0
    assert curve[0] == pytest.approx(big.mean(), rel=1e-12)
    assert all(b <= a for a, b in zip(curve, curve[1:], strict=False))


def test_scores_only_at_budgets_the_runs_reach(tiny: Path) -> None:
    table = landscape.load_table(tiny)
    result = landscape.compare([table], ["grid"], seeds=3, budget=2, progress=False)
    entry = result["tables"][0]
    # 10% and 20% of 8 rows are 1 and 2 evaluations; 50% (4) lies beyond the budget
    assert entry["budgets"] == [1, 2] and entry["unreached_budgets"] == [4]
    assert set(entry["samplers"]["grid"]["scores"]) == {"1", "2"}
    assert all(len(c) <= 2 for c in entry["samplers"]["grid"]["curves"])
    text = landscape.markdown(result)
    assert "score @1 (12%) | score @2 (25%) |" in text and "@4" not in text.split("\n| grid")[0]
    assert "scores at 4 (50%) of the rows are left out" in text
    one = landscape.compare([table], ["grid"], seeds=1, budget=1, progress=False)
    budget_one = one["tables"][0]
    assert budget_one["budgets"] == [1] and budget_one["unreached_budgets"] == [2, 4]


def test_a_miss_prints_as_more_than_the_budget(tiny: Path) -> None:
    table = landscape.load_table(tiny)
    result = landscape.compare([table], ["grid"], seeds=5, budget=1, progress=False)
    figures = result["tables"][0]["samplers"]["grid"]
    # with one evaluation of 8 rows, at most one of these seeds starts on the optimum
    assert figures["reached"] <= 1 and figures["median_evals"] == 2  # a miss counts 1 + 1
    text = landscape.markdown(result)
    assert f"| grid | >1 | >1->1 | {figures['reached']}/5 | - |" in text
    assert ">8" not in text and "a miss is > 1" in text


def test_one_default_sampler_everywhere() -> None:
    from omegaconf import OmegaConf

    from study.config import CONF_DIR, SamplerConfig
    from study.search import DEFAULT_SAMPLER

    defaults = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "config.yaml"))["defaults"]
    conf_default = next(d["sampler"] for d in defaults if isinstance(d, dict) and "sampler" in d)
    assert DEFAULT_SAMPLER == "ga" == conf_default == SamplerConfig().name
    assert replay.parse(["table=x.csv"])["samplers"] == [DEFAULT_SAMPLER]
