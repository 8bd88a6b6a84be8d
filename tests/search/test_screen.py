"""The GA's pool screen (study/search/_screen.py): its pool, its model-free share and its check
of the model's predictions, driven directly through a Ledger on a replay table."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest

from study import landscape
from study.search import _screen as screen_module
from study.search._screen import PoolScreen
from study.search.ledger import Ledger

SIZES = (8, 6, 2, 3)  # a (ordered), b (ordered), flag, mode: 288 rows


def write_table(path: Path) -> Path:
    """A smooth bowl in a and b, the flag and the mode add to it; the optimum is unique."""
    lines = ["a,b,flag,mode,latency_us"]
    for a, b, flag, mode in itertools.product(*[range(k) for k in SIZES]):
        latency = 100 * math.exp(0.1 * (a - 5) ** 2 + 0.2 * (b - 1) ** 2 + 0.3 * flag + 0.1 * mode)
        lines.append(f"{2**a},{16 * (b + 1)},{flag},m{mode},{latency:.6f}")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def space(tmp_path: Path) -> landscape.ReplaySpace:
    return landscape.ReplaySpace(landscape.load_table(write_table(tmp_path / "bowl.csv")))


def drive(space: landscape.ReplaySpace, options: dict, trials: int, seed: int = 0) -> PoolScreen:
    """`trials` picks, each measured at once (the latency from the table) and recorded."""
    ledger = Ledger(space, seed)
    screen = PoolScreen(space, ledger, seed, options)
    for _ in range(trials):
        enc = screen.pick([])
        assert enc is not None
        key, valid = ledger.key_of(ledger.clip(enc))
        assert valid and ledger.is_fresh(key)  # a pick is always fresh
        ledger.record(key, float(space.table.latency[space.lookup(enc)]))
    return screen


def test_the_model_free_share_cannot_be_starved(space: landscape.ReplaySpace) -> None:
    screen = drive(space, {"adapt": 0}, 60)
    assert screen.explored == 60 // screen_module.EXPLORE_EVERY
    assert drive(space, {"adapt": 0, "explore": 0}, 30).explored == 0
    assert drive(space, {"adapt": 0, "explore": 3}, 30).explored == 10


def test_the_pool_scales_with_the_space(space: landscape.ReplaySpace) -> None:
    screen = PoolScreen(space, Ledger(space, 0), 0, {})
    screen._build()
    fresh = np.ones(space.table.size, dtype=bool)
    assert len(screen._uniform(fresh)) == screen_module.POOL_MIN  # 288 / 16 < 64
    assert len(PoolScreen(space, Ledger(space, 0), 0, {"pool": 10})._uniform(fresh)) == 10
    n = 18_000  # the share for a large space, capped
    expected = int(min(screen_module.POOL_MAX, max(screen_module.POOL_MIN, n / 16)))
    assert expected == screen_module.POOL_MAX and 16 / n < 0.001


def test_neighbours_are_one_or_two_small_steps_away(space: landscape.ReplaySpace) -> None:
    screen = PoolScreen(space, Ledger(space, 0), 0, {})
    screen._build()
    codes = space.table.index
    row = int(np.flatnonzero((codes == [3, 2, 0, 1]).all(axis=1))[0])
    expected = set()
    for r, c in enumerate(codes):
        diff = [d for d in range(4) if c[d] != codes[row][d]]
        ordered_ok = all(abs(int(c[d]) - int(codes[row][d])) <= 2 for d in diff if d < 2)
        categorical_ok = all(True for d in diff if d >= 2)  # any value of a categorical one
        if 1 <= len(diff) <= 2 and ordered_ok and categorical_ok:
            expected.add(r)
    assert set(screen._near(row).tolist()) == expected


def test_the_optimum_of_a_smooth_bowl_is_found_quickly(space: landscape.ReplaySpace) -> None:
    """288 rows, one optimum: random search needs 144.5 evaluations on average."""
    optimum = int(np.nanargmin(space.table.latency))
    found = []
    for seed in range(3):
        ledger = Ledger(space, seed)
        screen = PoolScreen(space, ledger, seed, {})
        for n in range(1, 61):
            enc = screen.pick([])
            row = space.lookup(enc)
            ledger.record(ledger.key_of(enc)[0], float(space.table.latency[row]))
            if row == optimum:
                found.append(n)
                break
    assert len(found) == 3 and max(found) <= 40, found


def test_a_model_whose_predictions_miss_is_not_trusted(space: landscape.ReplaySpace) -> None:
    ledger = Ledger(space, 0)
    screen = PoolScreen(space, ledger, 0, {})
    screen._build()
    keys = [key for _, key in ledger.candidates()]
    for row in range(screen_module.TRUST_WINDOW):  # predicted 1.0 +- 0.1, measured e^2
        screen._picked[row] = (0.0, 0.1)
        ledger.record(keys[row], math.exp(2.0))
    screen._check_trust()
    assert not screen.trusted and not screen._picked
    screen._calls = 1  # every second trial is model-free now
    assert screen._explore_now() and not (setattr(screen, "_calls", 2) or screen._explore_now())
    for row in range(8, 8 + screen_module.TRUST_WINDOW):  # predictions that hold
        screen._picked[row] = (2.0, 0.5)
        ledger.record(keys[row], math.exp(2.1))
    screen._check_trust()
    assert screen.trusted


def test_a_failure_is_no_measurement_to_judge_a_prediction_by(
    space: landscape.ReplaySpace,
) -> None:
    ledger = Ledger(space, 0)
    screen = PoolScreen(space, ledger, 0, {})
    screen._build()
    key = ledger.candidates()[0][1]
    screen._picked[0] = (0.0, 0.1)
    screen._check_trust()
    assert 0 in screen._picked  # not measured yet: kept
    ledger.record(key, None)
    screen._check_trust()
    assert not screen._picked and not screen._errors


def test_model_free_trials_take_turns_local_uniform_child(space: landscape.ReplaySpace) -> None:
    ledger = Ledger(space, 0)
    screen = PoolScreen(space, ledger, 0, {"free": "luc", "stall": 0})
    screen._build()
    codes = space.table.index
    best = int(np.flatnonzero((codes == [3, 2, 0, 1]).all(axis=1))[0])
    observed = [(best, 100.0), (best + 1, 200.0)]
    fresh = np.ones(space.table.size, dtype=bool)
    fresh[[best, best + 1]] = False
    child = 7
    picks = [screen._model_free(observed, [child], fresh) for _ in range(6)]
    for turn in (0, 3):  # local: one dimension, one step (any value of a categorical one)
        diff = np.flatnonzero(codes[picks[turn]] != codes[best])
        assert len(diff) == 1
        assert (
            diff[0] >= 2 or abs(int(codes[picks[turn]][diff[0]]) - int(codes[best][diff[0]])) == 1
        )
    assert picks[2] == picks[5] == child  # the GA's child
    assert screen.explored == 6
    fresh[screen._near(best, steps=1, dims=1)] = False  # no local move left: a uniform one
    screen.explored = 0
    assert fresh[screen._model_free(observed, [], fresh)]


def test_a_stalled_search_moves_locally(space: landscape.ReplaySpace) -> None:
    """Model-free trials take their turns (here: the GA's child) until the best has not
    improved for `stall` evaluations; then each is a one-step neighbour of the best."""
    screen = PoolScreen(space, Ledger(space, 0), 0, {"stall": 5, "free": "c"})
    screen._build()
    codes = space.table.index
    best = int(np.flatnonzero((codes == [3, 2, 0, 1]).all(axis=1))[0])
    near = set(screen._near(best, steps=1, dims=1).tolist())
    child = next(r for r in range(space.table.size) if r not in near and r != best)
    fresh = np.ones(space.table.size, dtype=bool)
    observed = [(best, 100.0)] + [(r, 200.0) for r in range(200, 205)]
    fresh[[best, *range(200, 205)]] = False
    screen._improved_at = 2  # 4 evaluations since the best improved: not stalled
    assert screen._model_free(observed, [child], fresh) == child
    screen._improved_at = 1  # 5: stalled
    picks = {screen._model_free(observed, [child], fresh) for _ in range(4)}
    assert picks <= near and len(picks) >= 2


def write_attention_table(path: Path) -> Path:
    """Our own kind of table: variants (one with a tunable), two mutations; SDPA at its
    defaults (variant sdpa, mut.layout=bhsd, mut.threads=0) is neither the best nor the worst."""
    rng = np.random.default_rng(7)
    lines = ["variant,chunked.chunk,mut.layout,mut.threads,latency_us"]
    for variant, chunks in (("sdpa", [""]), ("plain", [""]), ("chunked", ["64", "128", "256"])):
        for chunk, layout, threads in itertools.product(chunks, ("bhsd", "bshd"), (0, 1)):
            lines.append(f"{variant},{chunk},{layout},{threads},{rng.uniform(100, 900):.3f}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_the_first_pick_is_sdpa_at_its_defaults_where_the_space_holds_it(tmp_path: Path) -> None:
    """What the user runs today is measured first (the incumbent every later pick must beat);
    with start=uniform, and in a table without it (a Kernel Tuner cache), the first pick is a
    uniform draw: over 40 seeds, many rows."""
    table = landscape.load_table(write_attention_table(tmp_path / "attention.csv"))
    space = landscape.ReplaySpace(table)
    default = space.default_index()
    assert default is not None
    assert table.label(default) == "variant=sdpa, mut.layout=bhsd, mut.threads=0"

    def first(options: dict, seed: int) -> int:
        pick = PoolScreen(space, Ledger(space, seed), seed, options).pick([])
        assert pick is not None
        row = space.lookup(pick)
        assert row is not None
        return row

    assert {first({}, seed) for seed in range(40)} == {default}
    uniform = {first({"start": "uniform"}, seed) for seed in range(40)}
    assert len(uniform) >= 8  # of 20 rows
    bowl = landscape.ReplaySpace(landscape.load_table(write_table(tmp_path / "bowl.csv")))
    assert bowl.default_index() is None
    screen = drive(bowl, {}, 1)  # nothing to start from: a draw, as before
    assert screen.explored == 0
    with pytest.raises(ValueError, match="start='first': default or uniform"):
        PoolScreen(space, Ledger(space, 0), 0, {"start": "first"})
