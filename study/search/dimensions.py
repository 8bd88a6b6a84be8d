"""What the samplers read off a space's dimensions: their sizes and values, which are categorical,
and the identity of an encoding.

Both spaces (live `SearchSpace`, replay `ReplaySpace`) offer the same small interface:
`distributions()` (name -> IntDistribution of indices), `candidates()` (every distinct valid
effective candidate), `encode`/`decode` between the two, `invalid_reason(candidate)` and
`candidate.key()` (identity of the effective candidate).
"""

from __future__ import annotations

from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial


def dimension_sizes(space: Any) -> dict[str, int]:
    """Number of indices of each dimension."""
    return {n: d.high - d.low + 1 for n, d in space.distributions().items()}


def dimension_values(space: Any) -> dict[str, list[Any]]:
    """The values behind each integer index (for deciding what is categorical)."""
    if hasattr(space, "dimension_values"):
        return space.dimension_values()
    values: dict[str, list[Any]] = {"variant": [v.name for v in space.variants]}
    for variant in space.variants:
        for param, choices in space.choices[variant.name].items():
            values[f"{variant.name}.{param}"] = list(choices)
    for name, choices in space.mutations.items():
        values[f"mut.{name}"] = list(choices)
    return values


def is_categorical(name: str, values: list[Any]) -> bool:
    """The variant, a two-valued dimension or one with non-numeric values has no order to use."""
    if name == "variant" or len(values) == 2:
        return True
    return any(isinstance(v, bool) or not isinstance(v, int | float) for v in values)


def encoding_key(space: Any, encoded: dict[str, int]) -> tuple[str, bool]:
    """(key of the effective candidate, whether it is valid)."""
    candidate = space.decode(encoded)
    return candidate.key(), space.invalid_reason(candidate) is None


class FlatSpaceSampler(BaseSampler):
    """The part every sampler here shares: the whole flat space is one relative search space
    (every trial suggests every dimension), and a dimension the relative proposal lacks falls
    back to a seeded uniform draw."""

    def __init__(self, space: Any, seed: int | None) -> None:
        self._dists = dict(space.distributions())
        self._fallback = optuna.samplers.RandomSampler(seed=seed)

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return dict(self._dists)

    def sample_independent(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        return self._fallback.sample_independent(study, trial, param_name, param_distribution)
