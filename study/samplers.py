"""Samplers over the flat integer space: Optuna's where they fit, a candidate grid of our own.

- cmaes (default): CMA-ES with margin (integer-aware), TPE for whatever CMA-ES cannot sample,
  per-trial independent-sampling warnings off. Pruned (incorrect) trials are left out of its
  generations, so incorrect candidates do not steer the search.
- tpe: multivariate TPE with a constant liar for concurrent workers.
- random: uniform over the encoding.
- grid: every distinct valid effective candidate exactly once, shuffled by the seed; the study
  stops when all are measured. Optuna's GridSampler would walk the product of every dimension,
  inert ones included, which is far larger than the set of distinct candidates.
- ga: a genetic algorithm, Optuna's NSGA-II with one objective: a population per generation,
  elitist selection (the best of parents and children survive), uniform crossover and per-gene
  mutation. We use it rather than our own GA because it is well kept, handles integer genes,
  constraints and concurrent workers, and its generations show in the dashboard.
"""

from __future__ import annotations

import random
import warnings
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial

from study.space import SearchSpace

SAMPLERS = ("cmaes", "tpe", "random", "grid", "ga")


class CandidateGridSampler(BaseSampler):
    """Exhaustive search over distinct effective candidates, in a seeded random order."""

    def __init__(self, space: SearchSpace, seed: int | None = None) -> None:
        self._space = space
        self._order = [space.encode(c) for c in space.candidates()]
        random.Random(seed).shuffle(self._order)
        self._fallback = optuna.samplers.RandomSampler(seed=seed)

    @property
    def size(self) -> int:
        return len(self._order)

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return dict(self._space.distributions())

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        if not self._order:
            return {}
        seen = set()
        for other in study.get_trials(deepcopy=False):
            if other.number == trial.number:
                continue
            spec = other.user_attrs.get("spec_key") or other.system_attrs.get("grid_key")
            if spec:
                seen.add(spec)
        left = [e for e in self._order if self._space.decode(e).key() not in seen]
        if len(left) <= 1:
            study.stop()  # this trial takes the last candidate (or repeats one): no more after it
        chosen = left[0] if left else self._order[0]
        key = self._space.decode(chosen).key()
        study._storage.set_trial_system_attr(trial._trial_id, "grid_key", key)
        return dict(chosen)

    def sample_independent(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        return self._fallback.sample_independent(study, trial, param_name, param_distribution)


def make_sampler(sampler_cfg: dict[str, Any], space: SearchSpace, seed: int) -> BaseSampler:
    """Build the configured sampler, seeded."""
    name = sampler_cfg["name"]
    startup = sampler_cfg.get("n_startup_trials")
    if name == "cmaes":
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.CmaEsSampler(
            seed=seed,
            with_margin=True,
            n_startup_trials=startup if startup is not None else 5,
            popsize=sampler_cfg.get("popsize"),
            independent_sampler=optuna.samplers.TPESampler(seed=seed),
            warn_independent_sampling=False,
        )
    if name == "tpe":
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(
            seed=seed,
            n_startup_trials=startup if startup is not None else 8,
            multivariate=True,
            constant_liar=True,
        )
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "grid":
        return CandidateGridSampler(space, seed=seed)
    if name == "ga":
        kwargs: dict[str, Any] = {"seed": seed}
        for key in ("population_size", "mutation_prob", "crossover_prob"):
            if sampler_cfg.get(key) is not None:
                kwargs[key] = sampler_cfg[key]
        return optuna.samplers.NSGAIISampler(**kwargs)
    raise ValueError(f"unknown sampler {name!r}; choose one of: {', '.join(SAMPLERS)}")
