"""The genetic algorithm, with and without surrogate screening, run by `KnownAwareSampler`.

- ga: a genetic algorithm of our own: population (about the square root of the number of
  distinct candidates unless configured), tournament selection, uniform crossover, per-gene
  mutation (random value, or one step for ordered dimensions), elitism (the best of parents and
  children survive), generations, and screening (study/search/_screen.py): each trial gets, of
  a pool of the `offspring` (16) children, the best candidates' neighbours and a uniform sample
  of the space, the fresh one with the largest expected improvement under a Gaussian process of
  log latency (study/search/gp.py), with a share of model-free trials that cannot be starved.
  `screen=children` in the sampler config is the screen this replaced: the children only,
  under the additive model of study/search/surrogate.py (kept for the comparison).
- ga_plain: the same GA without the model (one child per trial; first generation stratified by
  variant with weight sqrt(its candidates)), kept as the baseline the screening is measured
  against.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from study.search._screen import PoolScreen
from study.search.asktell import KnownAwareSampler, Optimizer
from study.search.dimensions import dimension_sizes, dimension_values, is_categorical
from study.search.ledger import Ledger
from study.search.surrogate import AdditiveModel, log_safe

OFFSPRING = 16  # GA children screened by the surrogate per trial (1: no screening)


def ga_population(candidates: int) -> int:
    """The GA's default population: about the square root of the number of distinct candidates
    (6 to 16). A first generation is a uniform sample; on a space of 80 candidates, 12 of them
    would spend 15% of an exhaustive search before selection starts."""
    return int(min(16, max(6, round(math.sqrt(max(candidates, 1))))))


class GeneticOptimizer(Optimizer):
    """Generational GA with elitism over index vectors."""

    def __init__(
        self,
        dims: dict[str, int],
        values: dict[str, list[Any]],
        seed: int,
        population_size: int | None,
        mutation_prob: float | None,
        crossover_prob: float | None,
        first: Callable[[], dict[str, int]],
        screen: Callable[[list[dict[str, int]]], dict[str, int] | None] | None = None,
        offspring: int = 1,
    ) -> None:
        self.dims = dims
        self.screen = screen
        self.offspring = max(1, offspring) if screen is not None else 1
        self.ordered = {n for n in dims if not is_categorical(n, values.get(n, []))}
        self.rng = random.Random(seed)
        self.population_size = population_size or 12
        live = [n for n, size in dims.items() if size > 1]
        self.mutation_prob = mutation_prob or 1.0 / max(1, len(live))
        self.crossover_prob = 0.9 if crossover_prob is None else crossover_prob
        self.elite = max(1, self.population_size // 4)
        self.first = first
        self.parents: list[tuple[dict[str, int], float]] = []

    def _tournament(self) -> dict[str, int]:
        picks = self.rng.sample(self.parents, min(3, len(self.parents)))
        return min(picks, key=lambda p: p[1])[0]

    def ask(self) -> tuple[dict[str, int], Any]:
        if not self.parents:
            enc = self.first()
            return enc, enc
        children = [self._child() for _ in range(self.offspring)]
        chosen = self.screen(children) if self.screen is not None else None
        child = chosen if chosen is not None else children[0]
        return child, child

    def _child(self) -> dict[str, int]:
        a, b = self._tournament(), self._tournament()
        if self.rng.random() < self.crossover_prob:
            child = {n: (a[n] if self.rng.random() < 0.5 else b[n]) for n in self.dims}
        else:
            child = dict(a)
        for n, size in self.dims.items():
            if size > 1 and self.rng.random() < self.mutation_prob:
                if n in self.ordered and self.rng.random() < 0.5:
                    child[n] = min(size - 1, max(0, child[n] + self.rng.choice((-1, 1))))
                else:
                    child[n] = self.rng.randrange(size)
        return child

    def tell(self, results: list[tuple[Any, float]]) -> None:
        merged = sorted(self.parents + [(dict(t), v) for t, v in results], key=lambda p: p[1])
        unique: dict[tuple[int, ...], tuple[dict[str, int], float]] = {}
        for enc, value in merged:
            unique.setdefault(tuple(enc[n] for n in self.dims), (enc, value))
        ranked = list(unique.values())
        elite = ranked[: self.elite]
        rest = ranked[self.elite :]
        # elitism, then the rest by rank with a little diversity
        self.parents = elite + rest[: self.population_size - len(elite)]


class SurrogateScreen:
    """The GA's offspring screening (study/search/surrogate.py): of the children one generation
    step produces, the trial gets the fresh one with the largest expected improvement under the
    additive model.

    First generation: the model's pick over every fresh candidate. With nothing measured that
    is a candidate of the variant with the most unknowns (its tunables, its interactions); then
    the expected improvement weighs what the measurements say against what is still unknown
    (an untried variant is uncertain, hence attractive, until one of its candidates is
    measured). When no child is fresh (the population has converged on measured points): the
    model's pick over every fresh candidate, rather than a uniform draw.
    """

    def __init__(self, space: Any, ledger: Ledger, seed: int) -> None:
        self._space = space
        self._ledger = ledger
        self._rng = np.random.default_rng(seed)
        self._model: AdditiveModel | None = None
        self._row: dict[str, int] = {}  # candidate key -> index in the ledger's candidate list

    def _ensure_model(self) -> AdditiveModel:
        if self._model is None:
            space = self._space
            self._model = AdditiveModel([space.active_encoding(c) for c in space.candidates()])
            self._row = {key: i for i, (_, key) in enumerate(self._ledger.candidates())}
        return self._model

    def _observed(self) -> list[tuple[int, float]] | None:
        """(candidate row, value) of every known result, failures as the penalty; None where
        the values are not latencies (no model: the GA's own child is taken)."""
        penalty = self._ledger.penalty()
        observed = [
            (self._row[key], value if value is not None and math.isfinite(value) else penalty)
            for key, value in self._ledger.measured()
            if key in self._row
        ]
        return observed if log_safe([v for _, v in observed]) else None

    def _fresh_rows(self) -> list[int]:
        pool = self._ledger.candidates()
        return [i for i, (_, key) in enumerate(pool) if self._ledger.is_fresh(key)]

    def best_fresh(self, among: list[int] | None = None) -> dict[str, int] | None:
        """The model's pick among `among` (default: every fresh candidate); ties at random."""
        model = self._ensure_model()
        pool = self._ledger.candidates()
        rows = among if among else self._fresh_rows()
        if not rows:
            return None
        observed = self._observed()
        if observed is None:
            return dict(pool[rows[int(self._rng.integers(len(rows)))]][0])
        gain = model.expected_improvement(observed, rows)
        best = int(np.lexsort((self._rng.random(len(rows)), -gain))[0])
        return dict(pool[rows[best]][0])

    def choose(self, children: list[dict[str, int]]) -> dict[str, int] | None:
        self._ensure_model()
        ledger = self._ledger
        rows = set()
        for child in children:
            key, valid = ledger.key_of(ledger.clip(child))
            if valid and key in self._row and ledger.is_fresh(key):
                rows.add(self._row[key])
        return self.best_fresh(sorted(rows))


def _make(sampler_cfg: Mapping[str, Any], space: Any, seed: int, model: bool) -> KnownAwareSampler:
    dims = dimension_sizes(space)
    values = dimension_values(space)
    offspring = sampler_cfg.get("offspring")
    offspring = OFFSPRING if offspring is None else offspring
    ledger = Ledger(space, seed)
    screen: SurrogateScreen | PoolScreen | None = None
    if model and offspring > 1:
        if sampler_cfg.get("screen") == "children":  # the additive screen of the children only
            screen = SurrogateScreen(space, ledger, seed)
        else:
            screen = PoolScreen(space, ledger, seed, sampler_cfg)

    def first() -> dict[str, int]:
        enc = screen.best_fresh() if screen is not None else ledger.unmeasured(by_variant=True)
        return enc if enc is not None else {n: 0 for n in dims}

    def optimizer(s: int) -> GeneticOptimizer:
        return GeneticOptimizer(
            dims,
            values,
            s,
            sampler_cfg.get("population_size") or ga_population(len(space.candidates())),
            sampler_cfg.get("mutation_prob"),
            sampler_cfg.get("crossover_prob"),
            first,
            screen.choose if screen is not None else None,
            offspring,
        )

    return KnownAwareSampler(space, seed, optimizer, ledger)


def make_ga(sampler_cfg: Mapping[str, Any], space: Any, seed: int) -> KnownAwareSampler:
    """The GA with surrogate screening (`offspring` 1: without)."""
    return _make(sampler_cfg, space, seed, model=True)


def make_ga_plain(sampler_cfg: Mapping[str, Any], space: Any, seed: int) -> KnownAwareSampler:
    """The GA without the model: the baseline of the screening."""
    return _make(sampler_cfg, space, seed, model=False)
