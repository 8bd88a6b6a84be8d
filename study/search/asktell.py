"""Ask/tell optimisers over index vectors, run so that no trial is spent on a known result.

Proposing a configuration whose result is already known (or pending in another worker) would
spend a trial and teach nothing, so `KnownAwareSampler` never hands such a proposal to a trial:
the optimiser is told the known value at once, for free, and asked again. Incorrect (PRUNED),
failed (FAIL) and invalid proposals are told a penalty worse than every correct value
(rank-based optimisers only see the order), so they push the search away. When an optimiser
keeps proposing known points (it has converged), the trial gets a uniformly drawn unmeasured
candidate and the optimiser restarts with a new seed.

The optimiser's state (its distribution, its population) lives in the sampler object: a study
resumed in a new process starts a fresh optimiser, but the ledger it reads still never lets it
re-propose a configuration already measured in the study.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

from study.search.dimensions import FlatSpaceSampler
from study.search.ledger import Ledger

FREE_GENERATIONS = 2  # generations of known proposals told for free before a restart


class Optimizer:
    """ask() -> (encoding dict, token); tell([(token, value)]) once per population."""

    population_size: int

    def ask(self) -> tuple[dict[str, int], Any]:
        raise NotImplementedError

    def tell(self, results: list[tuple[Any, float]]) -> None:
        raise NotImplementedError


class KnownAwareSampler(FlatSpaceSampler):
    """Runs an ask/tell optimiser; never hands a trial a configuration with a known result."""

    def __init__(
        self,
        space: Any,
        seed: int,
        make_optimizer: Callable[[int], Optimizer],
        ledger: Ledger | None = None,
    ) -> None:
        """ledger: shared with whatever else proposes for this sampler (the GA's screen)."""
        super().__init__(space, seed)
        self._seed = seed
        self._make = make_optimizer
        self._restarts = 0
        self._opt = make_optimizer(seed)
        self._lock = threading.RLock()
        self._ledger = ledger if ledger is not None else Ledger(space, seed)
        self._batch: list[tuple[Any, float | None]] = []

    # Optuna interface
    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        ledger = self._ledger
        with self._lock:
            ledger.sync(study, trial.number)
            for _ in range(max(16, FREE_GENERATIONS * self._opt.population_size)):
                enc, token = self._opt.ask()
                enc = ledger.clip(enc)
                key, valid = ledger.key_of(enc)
                if not valid:
                    ledger.record(key, None)
                if not ledger.is_fresh(key):
                    self._told(token, ledger.value(key))
                    continue
                ledger.mark_pending(trial.number, key, token)
                return enc
            # converged on known points: restart the optimiser, give this trial a fresh candidate
            self._restarts += 1
            self._opt = self._make(self._seed + 7919 * self._restarts)
            self._batch = []
            enc = ledger.unmeasured()
            if enc is None:  # everything measured: repeat a known candidate (free) and stop
                study.stop()
                return ledger.any_candidate()
            key, _ = ledger.key_of(enc)
            ledger.mark_pending(trial.number, key)
            return enc

    def after_trial(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        state: TrialState,
        values: list[float] | None,
    ) -> None:
        with self._lock:
            proposed = self._ledger.finish(trial, state, values)
            if proposed is not None and proposed[0] is not None:
                self._told(*proposed)

    def _told(self, token: Any, value: float | None) -> None:
        self._batch.append((token, value))
        if len(self._batch) < self._opt.population_size:
            return
        batch, self._batch = self._batch[: self._opt.population_size], []
        penalty = self._ledger.penalty()  # every value told is in the ledger already
        self._opt.tell(
            [(t, v if v is not None and math.isfinite(v) else penalty) for t, v in batch]
        )
