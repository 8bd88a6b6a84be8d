"""The ledger: what one sampler knows of its study, kept in one place for every sampler.

An effective candidate is measured once per study (the live objective copies an earlier verdict;
replay counts distinct configurations), so a sampler must know, before it hands a trial a
proposal, whether that candidate's result is already known or is being measured by another
trial. The ledger holds that knowledge by candidate key:

- measured: the value of each finished candidate (None: incorrect, failed or invalid);
- pending: the candidate each running trial of this sampler measures, with the optimiser's
  token for it, and the candidates other processes' running trials measure;
- which trials it has learnt, so that a study resumed in a new process (or shared by several)
  is read once, not re-read on every trial.

The ask/tell samplers (study/search/asktell.py), the wrapped ones (tpe, random) and the GA's
surrogate screen use it through these methods only. It is not thread-safe on its own: its
owner holds a lock around each use.
"""

from __future__ import annotations

import math
import random
from typing import Any

import optuna
from optuna.distributions import IntDistribution
from optuna.trial import FrozenTrial, TrialState

from study.search.dimensions import encoding_key


class Ledger:
    """Measured values, pending candidates and the candidate list of one space, by key."""

    def __init__(self, space: Any, seed: int) -> None:
        self._space = space
        self._dists = dict(space.distributions())
        self._rng = random.Random(seed)  # draws of `unmeasured`
        self._known: dict[str, float | None] = {}  # key -> value (None: incorrect/failed/invalid)
        self._pending: dict[int, tuple[str, Any]] = {}  # trial number -> (key, token)
        self._pending_keys: set[str] = set()
        self._synced: set[int] = set()
        self._candidates: list[tuple[dict[str, int], str]] | None = None

    # -- encodings ---------------------------------------------------------------------------
    def clip(self, encoded: dict[str, int]) -> dict[str, int]:
        """Every dimension present and inside its range (an optimiser may step outside)."""
        out = {}
        for name, dist in self._dists.items():
            assert isinstance(dist, IntDistribution)
            out[name] = min(dist.high, max(dist.low, int(encoded.get(name, dist.low))))
        return out

    def key_of(self, encoded: dict[str, int]) -> tuple[str, bool]:
        """(key of the effective candidate, whether it is valid)."""
        return encoding_key(self._space, encoded)

    # -- what is known -----------------------------------------------------------------------
    def is_fresh(self, key: str) -> bool:
        """Neither known nor being measured: worth a trial."""
        return key not in self._known and key not in self._pending_keys

    def value(self, key: str) -> float | None:
        """The known value of `key` (None: incorrect, failed, invalid or not known)."""
        return self._known.get(key)

    def record(self, key: str, value: float | None) -> None:
        """Know `key`'s value without a trial (an invalid proposal is known at once: None)."""
        self._known[key] = value

    def taken(self) -> list[str]:
        """Every key that is known or pending (not fresh), for a caller keeping a fresh mask."""
        return [*self._known, *self._pending_keys]

    def measured(self) -> list[tuple[str, float | None]]:
        """(key, value) of everything known, in the order it became known."""
        return list(self._known.items())

    def penalty(self) -> float:
        """What an incorrect, failed or invalid result is told: worse than every correct one."""
        finite = [v for v in self._known.values() if v is not None and math.isfinite(v)]
        return abs(max(finite, default=1.0)) * 2.0 + 1.0

    # -- trials ------------------------------------------------------------------------------
    def mark_pending(self, trial_number: int, key: str, token: Any = None) -> None:
        """Trial `trial_number` of this sampler measures `key`; `token` is the optimiser's."""
        self._pending_keys.add(key)
        self._pending[trial_number] = (key, token)

    def sync(self, study: optuna.Study, current: int) -> None:
        """Learn results of trials this sampler did not propose (other processes, a resume)."""
        for other in study.get_trials(deepcopy=False):
            if other.number in self._synced or other.number == current:
                continue
            if other.number in self._pending:
                continue
            if not other.state.is_finished():
                if other.params and len(other.params) == len(self._dists):
                    key, _ = self.key_of(self.clip(dict(other.params)))
                    self._pending_keys.add(key)
                continue
            self._synced.add(other.number)
            if len(other.params) != len(self._dists):
                continue
            key, _ = self.key_of(self.clip(dict(other.params)))
            value = other.value if other.state == TrialState.COMPLETE else None
            self._known.setdefault(key, value)

    def finish(
        self, trial: FrozenTrial, state: TrialState, values: list[float] | None
    ) -> tuple[Any, float | None] | None:
        """Record a finished trial. Returns (token, value) where this sampler proposed it (the
        token for the optimiser to be told), None otherwise."""
        value = values[0] if state == TrialState.COMPLETE and values else None
        self._synced.add(trial.number)
        pending = self._pending.pop(trial.number, None)
        if pending is None:
            key, _ = self.key_of(self.clip(dict(trial.params)))
            self._known.setdefault(key, value)
            return None
        key, token = pending
        self._pending_keys.discard(key)
        self._known[key] = value
        return token, value

    # -- candidates --------------------------------------------------------------------------
    def candidates(self) -> list[tuple[dict[str, int], str]]:
        """Every distinct valid candidate as (encoding, key), built once."""
        if self._candidates is None:
            self._candidates = [(self._space.encode(c), c.key()) for c in self._space.candidates()]
        return self._candidates

    def any_candidate(self) -> dict[str, Any]:
        """A valid encoding to repeat when everything is measured."""
        pool = self.candidates()
        return dict(pool[0][0]) if pool else {}

    def unmeasured(self, by_variant: bool = False) -> dict[str, int] | None:
        """A uniformly drawn candidate whose result is neither known nor pending.

        by_variant: first a variant, with weight the square root of its number of candidates,
        then one of its candidates: a variant with 36 tile configurations is 6 (not 36) times as
        likely to be tried as SDPA with one. Uniform over variants helped where the optimum is
        a variant with few candidates and hurt where it is the one with many; the square root
        was the better compromise on the recorded landscapes (docs/samplers.md).
        """
        pool = self.candidates()
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
