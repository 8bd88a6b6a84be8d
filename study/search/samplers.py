"""Samplers over the flat integer space (live `SearchSpace` or replay `ReplaySpace`).

Both spaces offer the same small interface: `distributions()` (name -> IntDistribution of
indices), `candidates()` (every distinct valid effective candidate), `encode`/`decode` between
the two, `invalid_reason(candidate)` and `candidate.key()` (identity of the effective
candidate). The samplers use it to handle known configurations deliberately:

- An effective candidate is measured once per study (the live objective copies an earlier
  verdict; replay counts distinct configurations). Proposing a configuration whose result is
  already known (or pending in another worker) would spend a trial and teach nothing, so the
  ask/tell samplers below (cmaes, catcma, ga) and the wrapped ones (tpe, random) never hand such
  a proposal to a trial: the optimiser is told the known value at once, for free, and asked
  again. Incorrect (PRUNED), failed (FAIL) and invalid proposals are told a penalty worse than
  every correct value (rank-based optimisers only see the order), so they push the search
  away. When an optimiser keeps proposing known points (it has converged), the trial gets a
  uniformly drawn unmeasured candidate and the optimiser restarts with a new seed.
- cmaes: CMA-ES with margin (`cmaes.CMAwM`) over the integer indices, every
  dimension an integer with step 1, initial mean at the centre and standard deviation a quarter
  of each dimension's range.
- catcma: `cmaes.CatCMAwM`: categorical dimensions (the variant, layouts, flags, any dimension
  with two values or non-numeric values) as categorical distributions, ordered ones (tile
  sizes, chunk sizes, thread counts) as integers with margin.
- ga: a genetic algorithm of our own: population (about the square root of the number of
  distinct candidates unless configured), tournament selection, uniform crossover, per-gene
  mutation (random value, or one step for ordered dimensions), elitism (the best of parents and
  children survive), generations, and surrogate screening (pre-selection): each trial gets the
  fresh one of `offspring` (16) children with the largest expected improvement under a
  Bayesian additive model of log latency (study/search/surrogate.py). The first generation is the
  model's picks over every fresh candidate. `ga_plain` is the same GA without the model (one
  child per trial; first generation stratified by variant with weight sqrt(its candidates)),
  kept as the baseline the screening is measured against.
- tpe: Optuna's multivariate TPE, asked again when it proposes a known configuration.
- random: uniform over the distinct candidates not measured yet (sampling without replacement),
  which is the random-search baseline of the comparison.
- grid: every distinct valid effective candidate exactly once, shuffled by the seed; the study
  stops when all are measured.
- cmaes_optuna, nsga2: Optuna's CmaEsSampler (with margin, TPE for what it cannot sample) and
  NSGA-II with one objective, kept as baselines: they re-propose known configurations.

State (the optimiser's distribution, the population) lives in the sampler object: a study
resumed in a new process starts a fresh optimiser, but still never re-proposes a configuration
already measured in the study.
"""

from __future__ import annotations

import math
import random
import threading
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, IntDistribution
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState

from study.search.surrogate import AdditiveModel, log_safe

SAMPLERS = ("cmaes", "catcma", "ga", "tpe", "random", "grid", "ga_plain", "cmaes_optuna", "nsga2")
GRID_KEY = "grid_key"
TPE_ASKS = 4  # proposals of a wrapped sampler (TPE) tried before an unmeasured one is drawn
FREE_GENERATIONS = 2  # generations of known proposals told for free before a restart
OFFSPRING = 16  # GA children screened by the surrogate per trial (1: no screening)


# -- helpers over the space ---------------------------------------------------------------------
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
    if name == "variant" or len(values) == 2:
        return True
    return any(isinstance(v, bool) or not isinstance(v, int | float) for v in values)


def encoding_key(space: Any, encoded: dict[str, int]) -> tuple[str, bool]:
    """(key of the effective candidate, whether it is valid)."""
    candidate = space.decode(encoded)
    return candidate.key(), space.invalid_reason(candidate) is None


# -- the grid ------------------------------------------------------------------------------------
class CandidateGridSampler(BaseSampler):
    """Exhaustive search over distinct effective candidates, in a seeded random order."""

    def __init__(self, space: Any, seed: int | None = None) -> None:
        self._space = space
        self._order = [space.encode(c) for c in space.candidates()]
        random.Random(seed).shuffle(self._order)
        self._keys = [space.decode(e).key() for e in self._order]
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
            spec = other.user_attrs.get("spec_key") or other.system_attrs.get(GRID_KEY)
            if spec:
                seen.add(spec)
        left = [i for i, k in enumerate(self._keys) if k not in seen]
        if len(left) <= 1:
            study.stop()  # this trial takes the last candidate (or repeats one): no more after it
        index = left[0] if left else 0
        chosen, key = self._order[index], self._keys[index]
        study._storage.set_trial_system_attr(trial._trial_id, GRID_KEY, key)
        return dict(chosen)

    def sample_independent(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        return self._fallback.sample_independent(study, trial, param_name, param_distribution)


# -- ask/tell optimisers over index vectors ------------------------------------------------------
class _Optimizer:
    """ask() -> (encoding dict, token); tell([(token, value)]) once per population."""

    population_size: int

    def ask(self) -> tuple[dict[str, int], Any]:
        raise NotImplementedError

    def tell(self, results: list[tuple[Any, float]]) -> None:
        raise NotImplementedError


class _CMAwM(_Optimizer):
    def __init__(self, dims: dict[str, int], seed: int, popsize: int | None) -> None:
        from cmaes import CMAwM

        self.fixed = {n: 0 for n, size in dims.items() if size <= 1}
        self.names = [n for n, size in dims.items() if size > 1]
        sizes = np.array([dims[n] for n in self.names], dtype=float)
        bounds = np.stack([-0.5 * np.ones_like(sizes), sizes - 0.5], axis=1)
        spread = np.maximum(sizes / 4.0, 0.5)
        self.opt = CMAwM(
            mean=(sizes - 1) / 2.0,
            sigma=1.0,
            bounds=bounds,
            steps=np.ones_like(sizes),
            cov=np.diag(spread**2),
            seed=seed,
            population_size=popsize,
        )
        self.population_size = self.opt.population_size

    def ask(self) -> tuple[dict[str, int], Any]:
        x_eval, x_tell = self.opt.ask()
        enc = {n: int(round(float(v))) for n, v in zip(self.names, x_eval, strict=True)}
        return enc | self.fixed, x_tell

    def tell(self, results: list[tuple[Any, float]]) -> None:
        self.opt.tell(results)


class _CatCMAwM(_Optimizer):
    def __init__(
        self, dims: dict[str, int], values: dict[str, list[Any]], seed: int, popsize: int | None
    ) -> None:
        from cmaes import CatCMAwM

        self.fixed = {n: 0 for n, size in dims.items() if size <= 1}
        live = [n for n, size in dims.items() if size > 1]
        self.cat = [n for n in live if is_categorical(n, values.get(n, list(range(dims[n]))))]
        self.ints = [n for n in live if n not in self.cat]
        self.opt = CatCMAwM(
            z_space=[list(range(dims[n])) for n in self.ints] or None,
            c_space=[dims[n] for n in self.cat] or None,
            population_size=popsize,
            seed=seed,
        )
        self.population_size = self.opt.population_size

    def ask(self) -> tuple[dict[str, int], Any]:
        sol = self.opt.ask()
        enc = dict(self.fixed)
        if self.ints:
            enc |= {n: int(round(float(v))) for n, v in zip(self.ints, sol.z, strict=True)}
        if self.cat:
            enc |= {n: int(np.argmax(row)) for n, row in zip(self.cat, sol.c, strict=True)}
        return enc, sol

    def tell(self, results: list[tuple[Any, float]]) -> None:
        self.opt.tell(list(results))


class _GA(_Optimizer):
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


class KnownAwareSampler(BaseSampler):
    """Runs an ask/tell optimiser; never hands a trial a configuration with a known result."""

    def __init__(
        self,
        space: Any,
        seed: int,
        make_optimizer: Callable[[int], _Optimizer],
    ) -> None:
        self._space = space
        self._dists = dict(space.distributions())
        self._seed = seed
        self._rng = random.Random(seed)
        self._make = make_optimizer
        self._restarts = 0
        self._opt = make_optimizer(seed)
        self._lock = threading.RLock()
        self._known: dict[str, float | None] = {}  # key -> value (None: incorrect/failed/invalid)
        self._pending: dict[int, tuple[str, Any]] = {}  # trial number -> (key, token)
        self._pending_keys: set[str] = set()
        self._batch: list[tuple[Any, float | None]] = []
        self._synced: set[int] = set()
        self._candidates: list[tuple[dict[str, int], str]] | None = None
        self._fallback = optuna.samplers.RandomSampler(seed=seed)

    # Optuna interface
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

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        with self._lock:
            self._sync(study, trial.number)
            for _ in range(max(16, FREE_GENERATIONS * self._opt.population_size)):
                enc, token = self._opt.ask()
                enc = self._clip(enc)
                key, valid = encoding_key(self._space, enc)
                if not valid:
                    self._known[key] = None
                if key in self._known or key in self._pending_keys:
                    self._told(token, self._known.get(key))
                    continue
                self._pending[trial.number] = (key, token)
                self._pending_keys.add(key)
                return enc
            # converged on known points: restart the optimiser, give this trial a fresh candidate
            self._restarts += 1
            self._opt = self._make(self._seed + 7919 * self._restarts)
            self._batch = []
            enc = self.unmeasured()
            if enc is None:  # everything measured: repeat a known candidate (free) and stop
                study.stop()
                return self.any_candidate()
            key, _ = encoding_key(self._space, enc)
            self._pending_keys.add(key)
            self._pending[trial.number] = (key, None)
            return enc

    def after_trial(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        state: TrialState,
        values: list[float] | None,
    ) -> None:
        with self._lock:
            value = values[0] if state == TrialState.COMPLETE and values else None
            self._synced.add(trial.number)
            pending = self._pending.pop(trial.number, None)
            if pending is None:
                key, _ = encoding_key(self._space, self._clip(dict(trial.params)))
                self._known.setdefault(key, value)
                return
            key, token = pending
            self._pending_keys.discard(key)
            self._known[key] = value
            if token is not None:
                self._told(token, value)

    # internals
    def _clip(self, enc: dict[str, int]) -> dict[str, int]:
        out = {}
        for name, dist in self._dists.items():
            assert isinstance(dist, IntDistribution)
            out[name] = min(dist.high, max(dist.low, int(enc.get(name, dist.low))))
        return out

    def _told(self, token: Any, value: float | None) -> None:
        self._batch.append((token, value))
        if len(self._batch) < self._opt.population_size:
            return
        batch, self._batch = self._batch[: self._opt.population_size], []
        penalty = self.penalty()  # every value told is in self._known already
        self._opt.tell(
            [(t, v if v is not None and math.isfinite(v) else penalty) for t, v in batch]
        )

    def _sync(self, study: optuna.Study, current: int) -> None:
        """Learn results of trials this object did not propose (other processes, a resume)."""
        for other in study.get_trials(deepcopy=False):
            if other.number in self._synced or other.number == current:
                continue
            if other.number in self._pending:
                continue
            if not other.state.is_finished():
                if other.params and len(other.params) == len(self._dists):
                    key, _ = encoding_key(self._space, self._clip(dict(other.params)))
                    self._pending_keys.add(key)
                continue
            self._synced.add(other.number)
            if len(other.params) != len(self._dists):
                continue
            key, _ = encoding_key(self._space, self._clip(dict(other.params)))
            value = other.value if other.state == TrialState.COMPLETE else None
            self._known.setdefault(key, value)

    def any_candidate(self) -> dict[str, Any]:
        pool = self.candidate_list()
        return dict(pool[0][0]) if pool else {}

    def candidate_list(self) -> list[tuple[dict[str, int], str]]:
        """Every distinct valid candidate as (encoding, key), built once."""
        if self._candidates is None:
            self._candidates = [(self._space.encode(c), c.key()) for c in self._space.candidates()]
        return self._candidates

    def is_fresh(self, key: str) -> bool:
        """Neither known nor being measured: worth a trial."""
        return key not in self._known and key not in self._pending_keys

    def penalty(self) -> float:
        """What an incorrect, failed or invalid result is told: worse than every correct one."""
        finite = [v for v in self._known.values() if v is not None and math.isfinite(v)]
        return abs(max(finite, default=1.0)) * 2.0 + 1.0

    def unmeasured(self, by_variant: bool = False) -> dict[str, int] | None:
        """A uniformly drawn candidate whose result is neither known nor pending.

        by_variant: first a variant, with weight the square root of its number of candidates,
        then one of its candidates: a variant with 36 tile configurations is 6 (not 36) times as
        likely to be tried as SDPA with one. Uniform over variants helped where the optimum is
        a variant with few candidates and hurt where it is the one with many; the square root
        was the better compromise on the recorded landscapes (docs/samplers.md).
        """
        pool = self.candidate_list()
        if not pool:
            return None
        if by_variant:
            groups: dict[int, list[tuple[dict[str, int], str]]] = {}
            for enc, key in pool:
                groups.setdefault(enc.get("variant", 0), []).append((enc, key))
            sizes = [math.sqrt(len(g)) for g in groups.values()]
            pool = self._rng.choices(list(groups.values()), weights=sizes)[0]
        for _ in range(32):  # rejection sampling: cheap while most candidates are unmeasured
            enc, key = self._rng.choice(pool)
            if self.is_fresh(key):
                return dict(enc)
        left = [e for e, k in pool if self.is_fresh(k)]
        if not left and by_variant:  # that variant is measured out: any variant
            return self.unmeasured()
        return dict(self._rng.choice(left)) if left else None


class SurrogateScreen:
    """The GA's offspring screening (study/search/surrogate.py): of the children one generation step
    produces, the trial gets the fresh one with the largest expected improvement under the
    additive model.

    First generation: the model's pick over every fresh candidate. With nothing measured that
    is a candidate of the variant with the most unknowns (its tunables, its interactions); then
    the expected improvement weighs what the measurements say against what is still unknown
    (an untried variant is uncertain, hence attractive, until one of its candidates is
    measured). When no child is fresh (the population has converged on measured points): the
    model's pick over every fresh candidate, rather than a uniform draw.
    """

    def __init__(self, sampler: KnownAwareSampler, seed: int) -> None:
        self._sampler = sampler
        self._rng = np.random.default_rng(seed)
        self._model: AdditiveModel | None = None
        self._row: dict[str, int] = {}  # candidate key -> index in the sampler's candidate list

    def _ensure_model(self) -> AdditiveModel:
        if self._model is None:
            space = self._sampler._space
            self._model = AdditiveModel([space.active_encoding(c) for c in space.candidates()])
            self._row = {key: i for i, (_, key) in enumerate(self._sampler.candidate_list())}
        return self._model

    def _observed(self) -> list[tuple[int, float]] | None:
        """(candidate row, value) of every known result, failures as the penalty; None where
        the values are not latencies (no model: the GA's own child is taken)."""
        sampler = self._sampler
        penalty = sampler.penalty()
        observed = [
            (self._row[key], value if value is not None and math.isfinite(value) else penalty)
            for key, value in sampler._known.items()
            if key in self._row
        ]
        return observed if log_safe([v for _, v in observed]) else None

    def _fresh_rows(self) -> list[int]:
        pool = self._sampler.candidate_list()
        return [i for i, (_, key) in enumerate(pool) if self._sampler.is_fresh(key)]

    def best_fresh(self, among: list[int] | None = None) -> dict[str, int] | None:
        """The model's pick among `among` (default: every fresh candidate); ties at random."""
        model = self._ensure_model()
        pool = self._sampler.candidate_list()
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
        sampler = self._sampler
        rows = set()
        for child in children:
            key, valid = encoding_key(sampler._space, sampler._clip(child))
            if valid and key in self._row and sampler.is_fresh(key):
                rows.add(self._row[key])
        return self.best_fresh(sorted(rows))


class DedupSampler(BaseSampler):
    """Wraps a relative Optuna sampler (TPE) or none (uniform): asks again on a known proposal."""

    def __init__(self, space: Any, seed: int, inner: BaseSampler | None) -> None:
        self._space = space
        self._dists = dict(space.distributions())
        self._inner = inner
        self._aware = KnownAwareSampler(space, seed, lambda s: _Uniform(self))
        self._lock = threading.RLock()

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
        return self._aware.sample_independent(study, trial, param_name, param_distribution)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        aware = self._aware
        with self._lock:
            aware._sync(study, trial.number)
            if self._inner is not None:
                for _ in range(TPE_ASKS):
                    enc = self._inner.sample_relative(study, trial, dict(self._dists))
                    if len(enc) != len(self._dists):
                        break
                    enc = aware._clip(enc)
                    key, valid = encoding_key(self._space, enc)
                    if not valid:
                        aware._known[key] = None
                    if key in aware._known or key in aware._pending_keys:
                        continue
                    aware._pending[trial.number] = (key, None)
                    aware._pending_keys.add(key)
                    return enc
            enc = aware.unmeasured()
            if enc is None:  # everything measured: repeat a known candidate (free) and stop
                study.stop()
                return aware.any_candidate()
            key, _ = encoding_key(self._space, enc)
            aware._pending[trial.number] = (key, None)
            aware._pending_keys.add(key)
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
        self._aware.after_trial(study, trial, state, values)
        if self._inner is not None:
            self._inner.after_trial(study, trial, state, values)


class _Uniform(_Optimizer):
    population_size = 1

    def __init__(self, owner: DedupSampler) -> None:
        self.owner = owner

    def ask(self) -> tuple[dict[str, int], Any]:  # pragma: no cover - not used by DedupSampler
        raise NotImplementedError

    def tell(self, results: list[tuple[Any, float]]) -> None:  # pragma: no cover
        pass


# -- the factory ---------------------------------------------------------------------------------
def ga_population(candidates: int) -> int:
    """The GA's default population: about the square root of the number of distinct candidates
    (6 to 16). A first generation is a uniform sample; on a space of 80 candidates, 12 of them
    would spend 15% of an exhaustive search before selection starts."""
    return int(min(16, max(6, round(math.sqrt(max(candidates, 1))))))


def option_error(sampler_cfg: Any) -> str | None:
    """Why a sampler option is out of range, in one line (None: all fine). The one check for
    `study.run` (config validation) and `study.replay` (sampler.<option>=V)."""
    for key in ("population_size", "offspring"):
        value = sampler_cfg.get(key)
        if value is not None and (type(value) is not int or value < 1):
            return f"sampler.{key} must be >= 1, got {value}"
    for key in ("mutation_prob", "crossover_prob"):
        value = sampler_cfg.get(key)
        if value is not None and (type(value) not in (int, float) or not 0 <= value <= 1):
            return f"sampler.{key} must be in [0, 1], got {value}"
    return None


def make_sampler(sampler_cfg: dict[str, Any], space: Any, seed: int) -> BaseSampler:
    """Build the configured sampler, seeded."""
    reason = option_error(sampler_cfg)
    if reason is not None:
        raise ValueError(reason)
    name = sampler_cfg["name"]
    startup = sampler_cfg.get("n_startup_trials")
    popsize = sampler_cfg.get("popsize")
    dims = {n: d.high - d.low + 1 for n, d in space.distributions().items()}
    if name == "cmaes":
        return KnownAwareSampler(space, seed, lambda s: _CMAwM(dims, s, popsize))
    if name == "catcma":
        values = dimension_values(space)
        return KnownAwareSampler(space, seed, lambda s: _CatCMAwM(dims, values, s, popsize))
    if name in ("ga", "ga_plain"):
        values = dimension_values(space)
        holder: list[KnownAwareSampler] = []
        offspring = sampler_cfg.get("offspring")
        offspring = OFFSPRING if offspring is None else offspring
        screened = name == "ga" and offspring > 1
        screens: list[SurrogateScreen] = []

        def first() -> dict[str, int]:
            enc = screens[0].best_fresh() if screens else holder[0].unmeasured(by_variant=True)
            return enc if enc is not None else {n: 0 for n in dims}

        sampler = KnownAwareSampler(
            space,
            seed,
            lambda s: _GA(
                dims,
                values,
                s,
                sampler_cfg.get("population_size") or ga_population(len(space.candidates())),
                sampler_cfg.get("mutation_prob"),
                sampler_cfg.get("crossover_prob"),
                first,
                (lambda children: screens[0].choose(children)) if screened else None,
                offspring,
            ),
        )
        holder.append(sampler)
        if screened:
            screens.append(SurrogateScreen(sampler, seed))
        return sampler
    if name == "tpe":
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        inner = optuna.samplers.TPESampler(
            seed=seed,
            n_startup_trials=startup if startup is not None else 8,
            multivariate=True,
            constant_liar=True,
        )
        return DedupSampler(space, seed, inner)
    if name == "random":
        return DedupSampler(space, seed, None)
    if name == "grid":
        return CandidateGridSampler(space, seed=seed)
    if name == "cmaes_optuna":
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.CmaEsSampler(
            seed=seed,
            with_margin=True,
            n_startup_trials=startup if startup is not None else 5,
            popsize=popsize,
            independent_sampler=optuna.samplers.TPESampler(seed=seed),
            warn_independent_sampling=False,
        )
    if name == "nsga2":
        kwargs: dict[str, Any] = {"seed": seed}
        for key in ("population_size", "mutation_prob", "crossover_prob"):
            if sampler_cfg.get(key) is not None:
                kwargs[key] = sampler_cfg[key]
        return optuna.samplers.NSGAIISampler(**kwargs)
    raise ValueError(f"unknown sampler {name!r}; choose one of: {', '.join(SAMPLERS)}")
