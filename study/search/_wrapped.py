"""Optuna's samplers, wrapped where they would re-spend a trial on a known configuration.

- tpe: Optuna's multivariate TPE (constant liar), asked again when it proposes a known
  configuration, then a uniform unmeasured candidate.
- random: uniform over the distinct candidates not measured yet (sampling without replacement),
  which is the random-search baseline of the comparison.
- cmaes_optuna, nsga2: Optuna's CmaEsSampler (with margin, TPE for what it cannot sample) and
  NSGA-II with one objective, kept as baselines: they re-propose known configurations.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Mapping
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState

from study.search.dimensions import FlatSpaceSampler
from study.search.ledger import Ledger

TPE_ASKS = 4  # proposals of a wrapped sampler (TPE) tried before an unmeasured one is drawn


class DedupSampler(FlatSpaceSampler):
    """Wraps a relative Optuna sampler (TPE) or none (uniform): asks again on a known proposal."""

    def __init__(self, space: Any, seed: int, inner: BaseSampler | None) -> None:
        super().__init__(space, seed)
        self._inner = inner
        self._ledger = Ledger(space, seed)
        self._lock = threading.RLock()

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        ledger = self._ledger
        with self._lock:
            ledger.sync(study, trial.number)
            if self._inner is not None:
                for _ in range(TPE_ASKS):
                    enc = self._inner.sample_relative(study, trial, dict(self._dists))
                    if len(enc) != len(self._dists):
                        break
                    enc = ledger.clip(enc)
                    key, valid = ledger.key_of(enc)
                    if not valid:
                        ledger.record(key, None)
                    if not ledger.is_fresh(key):
                        continue
                    ledger.mark_pending(trial.number, key)
                    return enc
            enc = ledger.unmeasured()
            if enc is None:  # everything measured: repeat a known candidate (free) and stop
                study.stop()
                return ledger.any_candidate()
            key, _ = ledger.key_of(enc)
            ledger.mark_pending(trial.number, key)
            return enc

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if self._inner is not None:
            self._inner.before_trial(study, trial)

    def after_trial(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        state: TrialState,
        values: list[float] | None,
    ) -> None:
        with self._lock:
            self._ledger.finish(trial, state, values)
        if self._inner is not None:
            self._inner.after_trial(study, trial, state, values)


def make_tpe(sampler_cfg: Mapping[str, Any], space: Any, seed: int) -> DedupSampler:
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    startup = sampler_cfg.get("n_startup_trials")
    inner = optuna.samplers.TPESampler(
        seed=seed,
        n_startup_trials=startup if startup is not None else 8,
        multivariate=True,
        constant_liar=True,
    )
    return DedupSampler(space, seed, inner)


def make_random(sampler_cfg: Mapping[str, Any], space: Any, seed: int) -> DedupSampler:
    return DedupSampler(space, seed, None)


def make_cmaes_optuna(sampler_cfg: Mapping[str, Any], space: Any, seed: int) -> BaseSampler:
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    startup = sampler_cfg.get("n_startup_trials")
    return optuna.samplers.CmaEsSampler(
        seed=seed,
        with_margin=True,
        n_startup_trials=startup if startup is not None else 5,
        popsize=sampler_cfg.get("popsize"),
        independent_sampler=optuna.samplers.TPESampler(seed=seed),
        warn_independent_sampling=False,
    )


def make_nsga2(sampler_cfg: Mapping[str, Any], space: Any, seed: int) -> BaseSampler:
    kwargs: dict[str, Any] = {"seed": seed}
    for key in ("population_size", "mutation_prob", "crossover_prob"):
        if sampler_cfg.get(key) is not None:
            kwargs[key] = sampler_cfg[key]
    return optuna.samplers.NSGAIISampler(**kwargs)
