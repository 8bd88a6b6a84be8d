"""grid: every distinct valid effective candidate exactly once, shuffled by the seed; the study
stops when all are measured."""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial

from study.search.dimensions import FlatSpaceSampler

GRID_KEY = "grid_key"  # system attr: the candidate a running grid trial claimed


class CandidateGridSampler(FlatSpaceSampler):
    """Exhaustive search over distinct effective candidates, in a seeded random order."""

    def __init__(self, space: Any, seed: int | None = None) -> None:
        super().__init__(space, seed)
        self._space = space
        self._order = [space.encode(c) for c in space.candidates()]
        random.Random(seed).shuffle(self._order)
        self._keys = [space.decode(e).key() for e in self._order]

    @property
    def size(self) -> int:
        return len(self._order)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        if not self._order:
            return {}
        seen = set()
        for other in study.get_trials(deepcopy=False):
            if other.number == trial.number:
                continue
            spec = other.user_attrs.get("spec_key") or other.system_attrs.get(GRID_KEY)
            if spec:
                seen.add(spec)
        left = [i for i, k in enumerate(self._keys) if k not in seen]
        if len(left) <= 1:
            study.stop()  # this trial takes the last candidate (or repeats one): no more after it
        index = left[0] if left else 0
        chosen, key = self._order[index], self._keys[index]
        # Optuna has no public way for a sampler to annotate the trial it samples for
        study._storage.set_trial_system_attr(trial._trial_id, GRID_KEY, key)
        return dict(chosen)


def make_grid(sampler_cfg: Mapping[str, Any], space: Any, seed: int) -> CandidateGridSampler:
    return CandidateGridSampler(space, seed=seed)
