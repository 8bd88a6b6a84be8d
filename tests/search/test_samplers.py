"""Samplers on the live flat space: known, invalid and incorrect candidates are not re-spent."""

from __future__ import annotations

import hashlib

import optuna
import pytest
from optuna.trial import TrialState

import kernels
from study.search import make_sampler
from study.search.dimensions import dimension_values, is_categorical
from study.space import build_space

NAMES = ["cmaes", "catcma", "ga", "ga_plain", "tpe", "random"]


@pytest.fixture(autouse=True)
def _quiet() -> None:
    optuna.logging.set_verbosity(optuna.logging.ERROR)


def cpu_space(variants: list[str], mutations: dict[str, list], seq: int = 512):
    """A space of built-in variants for a small CPU problem, every variant supported."""
    problem = kernels.Problem(
        batch=1, heads_q=2, heads_kv=2, seq_q=seq, seq_kv=seq, head_dim=16,
        dtype="float32", causal=False, device="cpu",
    )  # fmt: skip
    cfg = {"variants": variants, "mutations": mutations}
    return build_space(problem, cfg, kernels.variants(), lambda names: {n: None for n in names})


@pytest.fixture(scope="module")
def space():
    return cpu_space(["plain", "chunked"], {"layout": ["bhsd", "bshd"], "threads": [0, 1]})


def fake_objective(space):
    """A deterministic latency per effective candidate; chunk=64 with bshd is 'incorrect'."""

    def objective(trial: optuna.Trial) -> float:
        candidate = space.decode(space.suggest(trial))
        trial.set_user_attr("spec_key", candidate.key())
        if space.invalid_reason(candidate):
            trial.set_user_attr("rejected_by", "invalid_params")
            raise optuna.TrialPruned()
        if candidate.params.get("chunk") == 64 and candidate.mutations["layout"] == "bshd":
            trial.set_user_attr("rejected_by", "tolerance")
            raise optuna.TrialPruned()
        digest = hashlib.sha1(candidate.key().encode()).hexdigest()
        return 10.0 + int(digest[:6], 16) % 1000

    return objective


def test_space_has_invalid_points_and_known_kinds(space) -> None:
    assert len(space.candidates()) == 16  # (plain + chunk 64/128/256) x 2 layouts x 2 thread counts
    values = dimension_values(space)
    kinds = {n: is_categorical(n, v) for n, v in values.items()}
    assert kinds == {
        "variant": True,
        "chunked.chunk": False,
        "mut.layout": True,
        "mut.threads": True,
    }


@pytest.mark.parametrize("name", NAMES)
def test_each_trial_is_a_new_valid_candidate(space, name: str) -> None:
    study = optuna.create_study(sampler=make_sampler({"name": name}, space, seed=2))
    study.optimize(fake_objective(space), n_trials=16)
    keys = [t.user_attrs["spec_key"] for t in study.trials]
    assert len(set(keys)) == 16  # all 16 distinct candidates, none twice
    assert not [t for t in study.trials if t.user_attrs.get("rejected_by") == "invalid_params"]
    pruned = [t for t in study.trials if t.state == TrialState.PRUNED]
    assert len(pruned) == 2  # chunk=64 with bshd, threads 0 and 1: each proposed once


@pytest.mark.parametrize("name", ["cmaes", "ga"])
def test_a_resumed_study_does_not_repeat_what_it_measured(space, name: str) -> None:
    study = optuna.create_study(sampler=make_sampler({"name": name}, space, seed=4))
    study.optimize(fake_objective(space), n_trials=7)
    fresh = optuna.load_study(
        study_name=study.study_name,
        storage=study._storage,
        sampler=make_sampler({"name": name}, space, seed=4),
    )
    fresh.optimize(fake_objective(space), n_trials=9)
    keys = [t.user_attrs["spec_key"] for t in fresh.trials]
    assert len(keys) == 16 and len(set(keys)) == 16


def test_all_measured_stops_the_study(space) -> None:
    study = optuna.create_study(sampler=make_sampler({"name": "random"}, space, seed=0))
    study.optimize(fake_objective(space), n_trials=40)
    complete_or_pruned = [t for t in study.trials if t.state.is_finished()]
    assert len({t.user_attrs.get("spec_key") for t in complete_or_pruned if t.params}) == 16
    assert len(study.trials) <= 17  # the trial that finds nothing left repeats one, then stops


def test_the_ga_goes_where_the_model_knows_least(space) -> None:
    """With one candidate measured, the screened GA's next pick differs from it in every
    dimension (variant, layout, threads): the model is least sure there, whatever the seed."""
    for seed in range(5):
        study = optuna.create_study(sampler=make_sampler({"name": "ga"}, space, seed=seed))
        study.optimize(fake_objective(space), n_trials=2)
        first, second = (space.decode(dict(t.params)) for t in study.trials)
        assert first.variant != second.variant, (first, second)
        assert first.mutations["layout"] != second.mutations["layout"]
        assert first.mutations["threads"] != second.mutations["threads"]


def test_active_encoding_leaves_out_other_variants_tunables(space) -> None:
    by_variant = {c.variant: space.active_encoding(c) for c in space.candidates()}
    assert set(by_variant["chunked"]) == {"variant", "chunked.chunk", "mut.layout", "mut.threads"}
    assert set(by_variant["plain"]) == {"variant", "mut.layout", "mut.threads"}
    for candidate in space.candidates():  # the active indices are the encoding's
        encoded = space.encode(candidate)
        assert all(encoded[n] == i for n, i in space.active_encoding(candidate).items())


def test_a_live_space_names_sdpa_at_its_defaults(space) -> None:
    """The default sampler's first pick (study/search/_screen.py): SDPA as a model calls it,
    where the space offers it; none in a space without the sdpa variant."""
    assert space.default_index() is None  # plain and chunked only
    with_sdpa = cpu_space(["sdpa", "plain"], {"layout": ["bshd", "bhsd"], "threads": [1, 0]}, 64)
    index = with_sdpa.default_index()
    assert index is not None
    assert with_sdpa.candidates()[index].to_dict() == {
        "variant": "sdpa",
        "params": {},
        "mutations": {"layout": "bhsd", "threads": 0},
    }
