"""The GA's surrogate (study/search/surrogate.py): posterior, features, expected improvement."""

from __future__ import annotations

import itertools

import numpy as np

from study.search import surrogate
from study.search.surrogate import AdditiveModel


def landscape(rng: np.random.Generator) -> tuple[list[dict[str, int]], np.ndarray]:
    """Three variants (one with a 6-value tunable of its own), a shared 3-value layout and a
    2-value flag: 3*2 + 6*3*2 + 3*2 = 48 candidates, log latency additive plus small noise."""
    active, logs = [], []
    variant_effect = rng.normal(0, 1.0, 3)
    tile_effect = rng.normal(0, 0.5, 6)
    layout_effect, flag_effect = rng.normal(0, 0.3, 3), rng.normal(0, 0.3, 2)
    for v in range(3):
        tiles = range(6) if v == 1 else [None]
        for tile, layout, flag in itertools.product(tiles, range(3), range(2)):
            enc = {"variant": v, "mut.layout": layout, "mut.flag": flag}
            y = variant_effect[v] + layout_effect[layout] + flag_effect[flag]
            if tile is not None:
                enc["v1.tile"] = tile
                y += tile_effect[tile]
            active.append(enc)
            logs.append(y + rng.normal(0, 0.02))
    return active, np.array(logs)


def test_features_follow_the_active_dimensions() -> None:
    active, _ = landscape(np.random.default_rng())
    model = AdditiveModel(active)
    # one-hot: 3 variants + 6 tiles + 3 layouts + 2 flags = 14 main effects; the layout and the
    # flag are shared by the three variants: 3 x (3 + 2) = 15 interactions; the tile is not
    assert model.features == 14 + 15
    assert model.size == len(active) == 48


def test_with_no_data_a_draw_is_from_the_prior() -> None:
    model = AdditiveModel(landscape(np.random.default_rng())[0])
    draws = np.stack([model.draw([], np.random.default_rng(s)) for s in range(400)])
    # a candidate sums 3 or 4 independent features: variance = sum of their prior variances
    sd = surrogate
    base = sd.VARIANT_SD**2 + 2 * sd.MAIN_SD**2 + 2 * sd.INTERACTION_SD**2
    expected = np.array([base + sd.MAIN_SD**2 if "v1.tile" in a else base for a in model_rows()])
    assert np.allclose(draws.mean(axis=0), 0.0, atol=5 * np.sqrt(expected.max() / 400))
    assert np.allclose(draws.var(axis=0), expected, rtol=0.25)


def model_rows() -> list[dict[str, int]]:
    return landscape(np.random.default_rng(0))[0]


def test_posterior_ranks_unmeasured_candidates_like_the_truth() -> None:
    """Fresh random effects; 30 of 48 measured, covering every value; the mean of many draws
    over the other 18 must order them as the true values do (an additive truth is what the
    model can represent)."""
    rng = np.random.default_rng()
    active, logs = landscape(rng)
    latency = 1000.0 * np.exp(logs)
    model = AdditiveModel(active)
    while True:  # every value of every dimension measured at least once (else no data on it)
        measured = rng.choice(len(active), 30, replace=False)
        seen = {(n, i) for r in measured for n, i in active[r].items()}
        if seen == {(n, i) for a in active for n, i in a.items()}:
            break
    observed = [(int(r), float(latency[r])) for r in measured]
    rest = np.setdiff1d(np.arange(len(active)), measured)
    mean = np.mean([model.draw(observed, rng) for _ in range(200)], axis=0)
    corr = np.corrcoef(mean[rest], logs[rest])[0, 1]
    assert corr > 0.9, corr
    # one draw is a sample, not the mean: two draws differ, and both follow the data
    a, b = model.draw(observed, rng), model.draw(observed, rng)
    assert not np.allclose(a, b)
    assert np.corrcoef(a[measured], logs[measured])[0, 1] > 0.9


def test_a_measured_candidate_is_pinned_down() -> None:
    """The posterior at a measured point sits near its centred log value, with a spread of the
    order of the noise, far below the prior's (about 1.2 here)."""
    rng = np.random.default_rng()
    active, logs = landscape(rng)
    model = AdditiveModel(active)
    everything = [(i, float(1000.0 * np.exp(y))) for i, y in enumerate(logs)]
    draws = np.stack([model.draw(everything, rng) for _ in range(100)])
    centred = logs - logs.mean()
    assert np.abs(draws.mean(axis=0) - centred).max() < 0.2
    assert draws.std(axis=0).max() < 0.25


def test_log_safe() -> None:
    assert surrogate.log_safe([1.0, 3e5])
    assert not surrogate.log_safe([1.0, 0.0])
    assert not surrogate.log_safe([1.0, float("nan")])


def test_expected_improvement_matches_posterior_draws() -> None:
    """The closed form against Monte Carlo: E[max(best - f, 0)] over many Thompson draws of
    the same posterior (draws sample the weights; the closed form sums each candidate's
    feature covariances), on fresh data with a third of the candidates measured."""
    rng = np.random.default_rng()
    active, logs = landscape(rng)
    model = AdditiveModel(active)
    measured = rng.choice(len(active), 16, replace=False)
    observed = [(int(r), float(1000.0 * np.exp(logs[r]))) for r in measured]
    centred = logs[measured] - logs[measured].mean()
    draws = np.stack([model.draw(observed, rng) for _ in range(4000)])
    monte_carlo = np.maximum(centred.min() - draws, 0.0).mean(axis=0)
    closed = model.expected_improvement(observed)
    spread = np.maximum(centred.min() - draws, 0.0).std(axis=0) / np.sqrt(len(draws))
    # a tail beyond 1/4000 of the draws is below Monte Carlo's resolution: 1% of the top slack
    slack = 5 * spread + 0.01 * closed.max()
    assert np.all(np.abs(closed - monte_carlo) <= slack), np.abs(closed - monte_carlo) / slack
    assert closed.max() > 0.01  # not a vacuous comparison of zeros
    among = [int(i) for i in rng.choice(len(active), 7, replace=False)]
    assert np.allclose(model.expected_improvement(observed, among), closed[among])


def test_expected_improvement_prefers_the_unknown_and_the_promising() -> None:
    """With nothing measured, the pick is a candidate with the most unknown features (the
    variant with a tunable of its own); once measured, a candidate whose every feature was
    seen at its best beats one that repeats the worst."""
    active, logs = landscape(np.random.default_rng())
    model = AdditiveModel(active)
    prior = model.expected_improvement([])
    assert "v1.tile" in active[int(np.argmax(prior))]
    observed = [(i, float(1000.0 * np.exp(y))) for i, y in enumerate(logs) if i % 2 == 0]
    gain = model.expected_improvement(observed)
    unmeasured = [i for i in range(len(active)) if i % 2]
    best = min(unmeasured, key=lambda i: logs[i])
    worst = max(unmeasured, key=lambda i: logs[i])
    assert gain[best] > gain[worst]
