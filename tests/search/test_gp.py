"""The GA's Gaussian process (study/search/gp.py): kernel, hyperparameter choice, factor updates."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from study.search import gp
from study.search.gp import KernelModel


def grid_codes(sizes: tuple[int, ...]) -> np.ndarray:
    return np.array(list(itertools.product(*[range(k) for k in sizes])), dtype=np.int64)


def test_the_kernel_is_the_mean_similarity_plus_the_mean_pairwise_product() -> None:
    codes = grid_codes((3, 2, 2))  # ordered 3-value, two flags
    model = KernelModel(codes, [True, False, False])
    rank = np.array([0.0, 0.5, 1.0])
    a, b = 5, 8  # (1, 0, 1) and (2, 0, 0)
    ca, cb = codes[a], codes[b]
    s = [np.exp(-abs(rank[ca[0]] - rank[cb[0]]) / 0.5), 1.0, 0.0]  # per dimension
    additive = sum(s) / 3
    pairs = (s[0] * s[1] + s[0] * s[2] + s[1] * s[2]) / 3
    got_add, got_pairs = model._parts(np.array([a]), np.array([b]), 0.5)
    assert got_add[0, 0] == pytest.approx(additive, rel=1e-12)
    assert got_pairs[0, 0] == pytest.approx(pairs, rel=1e-12)
    k = model._combine((got_add, got_pairs), 0.3)
    assert k[0, 0] == pytest.approx(gp.AMPLITUDE * (0.7 * additive + 0.3 * pairs), rel=1e-12)
    same = model._parts(np.array([a]), np.array([a]), 0.5)
    assert same[0][0, 0] == pytest.approx(1.0) and same[1][0, 0] == pytest.approx(1.0)


def test_a_constant_dimension_is_left_out() -> None:
    codes = np.concatenate([grid_codes((4, 3)), np.zeros((12, 1), dtype=np.int64)], axis=1)
    model = KernelModel(codes, [True, True, False])
    assert model.dims == 2 and model.codes.shape == (12, 2)


def test_interactions_are_chosen_where_the_data_shows_them() -> None:
    """An additive truth: the marginal likelihood keeps rho = 0; an XOR of two flags (no main
    effects at all): it takes an interaction share."""
    codes = grid_codes((2, 2, 2, 5))
    additive = 0.8 * codes[:, 0] + 0.5 * codes[:, 1] - 0.3 * codes[:, 2] + 0.2 * codes[:, 3]
    xor = 1.0 * (codes[:, 0] ^ codes[:, 1])
    rows = np.arange(len(codes))
    model = KernelModel(codes, [False, False, False, True])
    model.fit(rows, additive)
    assert model.hyper[0] == 0.0
    model = KernelModel(codes, [False, False, False, True])
    model.fit(rows, xor)
    assert model.hyper[0] > 0.0


def test_predictions_interpolate_and_the_unknown_is_uncertain() -> None:
    codes = grid_codes((6, 2, 2))
    truth = 0.3 * np.abs(codes[:, 0] - 2) + 0.4 * codes[:, 1] + 0.1 * codes[:, 2]
    rows = np.arange(0, len(codes), 2)
    model = KernelModel(codes, [True, False, False])
    model.fit(rows, truth[rows])
    mean, sd = model.predict(np.arange(len(codes)))
    fitted, shift, scale = gp.transform(truth[rows])
    assert np.allclose(mean[rows], fitted, atol=0.25)  # near the (standardised) observations
    assert sd[rows].max() < sd[1::2].min()  # the observed are surer than the unobserved
    ranks = np.argsort(np.argsort(mean[1::2]))  # the unobserved rank like the truth
    assert np.corrcoef(ranks, np.argsort(np.argsort(truth[1::2])))[0, 1] > 0.8


def test_the_extended_factor_equals_a_fresh_one() -> None:
    codes = grid_codes((5, 4, 2))
    rng = np.random.default_rng(1)
    values = rng.normal(size=len(codes))
    model = KernelModel(codes, [True, True, False])
    model.fit(np.arange(10), values[:10])  # chooses hyperparameters
    model.fit(np.arange(25), values[:25], choose=False)  # extends the factor by 15 rows
    extended = model._chol.clone()
    kernel = model._kernel(np.arange(25), np.arange(25), model.hyper)
    fresh = torch.linalg.cholesky(kernel + (model.hyper[2] + 1e-8) * torch.eye(25).double())
    assert torch.allclose(extended, fresh, atol=1e-10)


def test_expected_improvement_is_the_closed_form() -> None:
    codes = grid_codes((4, 3))
    model = KernelModel(codes, [True, True])
    rows = np.array([0, 5, 11])
    model.fit(rows, np.array([1.0, 0.2, 2.0]))
    gain, mean, sd = model.scores(np.arange(12))
    best = gp.transform(np.array([1.0, 0.2, 2.0]))[0].min()
    rng = np.random.default_rng(0)
    draws = mean[:, None] + sd[:, None] * rng.standard_normal((12, 200_000))
    monte_carlo = np.maximum(best - draws, 0).mean(axis=1)
    assert np.allclose(gain, monte_carlo, atol=3e-3)


def test_transform_caps_the_slow_tail() -> None:
    y = np.log(np.array([1.0, 1.1, 1.2, 1.3, 1000.0]))
    standardised, shift, scale = gp.transform(y)
    capped = np.minimum(y, np.median(y) + 2 * (np.median(y) - y.min()))
    assert capped[-1] < y[-1]
    assert np.allclose(standardised * scale + shift, capped)
    assert standardised.mean() == pytest.approx(0.0, abs=1e-12)
    assert standardised.std() == pytest.approx(1.0)


def test_an_inert_code_is_a_category_of_its_own() -> None:
    """Dimension 0 has 4 ordered values and two inert codes (4, 5: two kinds of candidate for
    which it is inert); an inert code is similar to itself only, not to the nearest value."""
    codes = np.array([[v, f] for v in range(6) for f in range(2)], dtype=np.int64)
    model = KernelModel(codes, [True, False], sizes=[4, 2])
    table = model._similarity(0.5)[0]
    assert table.shape == (6, 6)
    assert table[3, 2] == pytest.approx(np.exp(-(1 / 3) / 0.5))  # ordered among the values
    assert table[3, 4] == 0.0 and table[4, 5] == 0.0 and table[4, 4] == 1.0
