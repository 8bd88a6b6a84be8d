"""The GA's screening on any size of space: a pool of proposals, a model that picks among them,
a share of model-free trials, and a check that the model still predicts what is measured.

Each trial of the screened GA (samplers.py, `ga`) gets one candidate. Most trials it is the
pick, by expected improvement under a model (gp.py, or the additive model of surrogate.py),
from a pool of fresh candidates (neither measured nor being measured):

- the GA's children of this step (recombination and mutation of the population);
- the neighbours of the best few measured candidates: every candidate of the space that differs
  from one of them in one or two dimensions, by at most two steps in an ordered one (a trust
  region around the incumbents: how a tile-size landscape is climbed);
- a uniform sample of the fresh candidates, scaled with the space (a 16-child screen of an
  18,000-row table sees 0.1% of it; this sees up to 512 more).

The first trial, with nothing measured, is SDPA at its defaults where the space holds it
(the space's `default_index`: what the user runs today, the figure every later pick has to
beat), and the second a uniform draw, which is where the search started before: the model
fitted to the default alone climbs the default's neighbourhood (other SDPA layouts), far from
an optimum in another variant. Without a default in the space (a brute-forced GPU table) or
with `start=uniform` the first pick is the draw. On a small table the first evaluations are
all there is at 2% of the rows, and a uniform first pick there is as often a variant five
times slower (issue 17: best/optimum at 2% of the rows behind random search on our three CPU
tables).

Every `explore`-th trial is model-free whatever the model says (the share cannot be starved):
alternately a uniformly drawn fresh candidate and the GA's own first child. The model's
predictions of its own picks are kept; when the last ones miss their measurements (mean squared
standardised error above 4: off by two predictive standard deviations on average), the model
is not trusted: the hyperparameters are re-chosen at once and every second trial is model-free
until its predictions hold again.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from typing import Any

import numpy as np

from study.search.dimensions import dimension_sizes, dimension_values, is_categorical
from study.search.gp import KernelModel
from study.search.ledger import Ledger
from study.search.surrogate import AdditiveModel, log_safe

POOL_MAX = 512  # uniform fresh candidates added to a pool, at most
POOL_SHARE = 1 / 16  # ... and at most this share of the space
POOL_MIN = 64
EXPLORE_EVERY = 6  # one trial in this many is model-free
DISTRUST_EVERY = 2  # ... one in this many while the model's predictions miss
NEIGHBOURS_OF = 3  # the best this many measured candidates lend their neighbours to the pool
NEIGHBOUR_CAP = 256
FREE = "uc"  # the model-free trials in turn: uniform (u), the GA's child (c); local (l) too
STALL = 30  # evaluations without a better best, after which model-free trials are local moves
TRUST_WINDOW = 8  # the model's last picks its calibration is judged on
TRUST_LIMIT = 4.0  # mean squared standardised error beyond which the model is not trusted


class PoolScreen:
    """Chooses the trial's candidate for the GA (a KnownAwareSampler sharing `ledger`)."""

    def __init__(self, space: Any, ledger: Ledger, seed: int, options: Mapping[str, Any]) -> None:
        """options: the sampler config; `model` (gp | additive), `explore` (every n-th trial
        model-free, 0: none), `pool` (uniform sample size), `local` and `adapt` (0: off) and
        `start` (default | uniform) are the switches docs/samplers.md compares the parts with."""
        self._space = space
        self._ledger = ledger
        self._options = dict(options)
        self._rng = np.random.default_rng(seed)
        self._kind = str(options.get("model") or "gp")
        explore = options.get("explore")
        self._explore = EXPLORE_EVERY if explore is None else int(explore)  # 0: never
        self._local = options.get("local", 1) not in (0, False, "0", "false")
        pool = options.get("pool")
        self._pool = None if pool is None else int(pool)
        self._adapt = options.get("adapt", 1) not in (0, False, "0", "false")
        self._start = str(options.get("start") or "default")
        if self._start not in ("default", "uniform"):
            raise ValueError(f"start={self._start!r}: default or uniform")
        self._built = False
        self._calls = 0
        self._picked: dict[int, tuple[float, float]] = {}  # row -> predicted (log mean, log sd)
        self._errors: deque[float] = deque(maxlen=TRUST_WINDOW)
        self._near_cache: dict[tuple[int, int, int], np.ndarray] = {}
        self._free = str(options.get("free") or FREE)
        stall = options.get("stall")
        self._stall = STALL if stall is None else int(stall)  # 0: never
        self._restart = int(options.get("restart") or 0)  # research: restarts of the local part
        self._best_seen, self._improved_at, self._restart_at = math.inf, 0, 0
        self._last_mean = self._last_sd = np.zeros(0)
        self._fitted_at = -100  # observations at the last choice of hyperparameters
        self.trusted = True
        self.explored = 0

    # -- setup
    def _build(self) -> None:
        if self._built:
            return
        space = self._space
        pool = self._ledger.candidates()
        cands = space.candidates()
        names = list(space.distributions())
        values = dimension_values(space)
        sizes = dimension_sizes(space)
        codes = np.empty((len(cands), len(names)), dtype=np.int64)
        kinds: dict[frozenset[str], int] = {}  # the sets of active dimensions, numbered
        for i, c in enumerate(cands):
            active = space.active_encoding(c)
            kind = kinds.setdefault(frozenset(active), len(kinds))
            codes[i] = [active.get(n, sizes[n] + kind) for n in names]  # inert: per kind
        self._codes = codes
        self._default = space.default_index()
        self._ordered = np.array(
            [not is_categorical(n, values.get(n, list(range(sizes[n])))) for n in names]
        )
        self._row = {key: i for i, (_, key) in enumerate(pool)}
        if self._kind == "additive":
            self._model: Any = AdditiveModel([space.active_encoding(c) for c in cands])
        else:
            grids = {}  # research: a grid as "a/b/c" (ls, rhos, noises)
            for key, name in (("ls", "lengthscales"), ("rhos", "rhos"), ("noises", "noises")):
                if self._options.get(key) is not None:
                    grids[name] = [float(x) for x in str(self._options[key]).split("/")]
            ard = bool(self._options.get("ard", 0))
            self._model = KernelModel(
                codes, list(self._ordered), ard=ard, sizes=[sizes[n] for n in names], **grids
            )
        self._built = True

    # -- what the study knows
    def _fresh_mask(self) -> np.ndarray:
        mask = np.ones(len(self._codes), dtype=bool)
        for key in self._ledger.taken():
            row = self._row.get(key)
            if row is not None:
                mask[row] = False
        return mask

    def _observed(self) -> list[tuple[int, float]] | None:
        """(row, value) of every known result, failures at the sampler's penalty; None where
        the values are not all positive (not latencies: no model)."""
        penalty = self._ledger.penalty()
        observed = [
            (self._row[key], value if value is not None and math.isfinite(value) else penalty)
            for key, value in self._ledger.measured()
            if key in self._row
        ]
        return observed if log_safe([v for _, v in observed]) else None

    # -- the pool
    def _near(self, row: int, steps: int = 2, dims: int = 2) -> np.ndarray:
        """Every candidate that differs from `row` in at most `dims` dimensions, by at most
        `steps` steps in an ordered one and to any value in a categorical one (computed once
        per row)."""
        if (row, steps, dims) not in self._near_cache:
            diff = self._codes != self._codes[row]
            far = diff & self._ordered[None, :] & (np.abs(self._codes - self._codes[row]) > steps)
            near = (diff.sum(axis=1) <= dims) & ~far.any(axis=1)
            near[row] = False
            self._near_cache[(row, steps, dims)] = np.flatnonzero(near)
        return self._near_cache[(row, steps, dims)]

    def _neighbours(self, observed: list[tuple[int, float]], fresh: np.ndarray) -> np.ndarray:
        if not observed:
            return np.zeros(0, dtype=np.int64)
        best = sorted(observed, key=lambda o: o[1])[:NEIGHBOURS_OF]
        rows = np.unique(np.concatenate([self._near(r) for r, _ in best]))
        rows = rows[fresh[rows]]
        if len(rows) > NEIGHBOUR_CAP:
            rows = self._rng.choice(rows, NEIGHBOUR_CAP, replace=False)
        return rows

    def _uniform(self, fresh: np.ndarray) -> np.ndarray:
        rows = np.flatnonzero(fresh)
        size = self._pool
        if size is None:
            size = int(min(POOL_MAX, max(POOL_MIN, POOL_SHARE * len(self._codes))))
        if len(rows) > size:
            rows = self._rng.choice(rows, size, replace=False)
        return rows

    def _children_rows(self, children: list[dict[str, int]], fresh: np.ndarray) -> list[int]:
        ledger = self._ledger
        rows = []
        for child in children:
            key, valid = ledger.key_of(ledger.clip(child))
            row = self._row.get(key)
            if valid and row is not None and fresh[row]:
                rows.append(row)
        return rows

    # -- the model
    def _score(self, observed: list[tuple[int, float]], rows: np.ndarray) -> np.ndarray:
        """Expected improvement of `rows`; the GP's latent mean and sd of each are kept in
        self._last_mean/_last_sd (to judge the pick by later)."""
        if self._kind == "additive":
            return self._model.expected_improvement(observed, list(rows))
        model: KernelModel = self._model
        m = len(observed)
        since = m - self._fitted_at
        choose = since >= (8 if m < 64 else 32) or (not self.trusted and since >= 8)
        logs = np.log([v for _, v in observed])
        model.fit([r for r, _ in observed], logs, choose=choose)
        if choose and m >= 4:
            self._fitted_at = m
        gain, self._last_mean, self._last_sd = model.scores(rows)
        return gain

    def _check_trust(self) -> None:
        """Score the model's finished picks; distrust it when they missed by too much."""
        if not self._adapt:
            return
        pool = self._ledger.candidates()
        known = dict(self._ledger.measured())
        for row, (mean, sd) in list(self._picked.items()):
            if pool[row][1] not in known:
                continue  # still being measured
            value = known[pool[row][1]]
            del self._picked[row]
            if value is None or not math.isfinite(value) or value <= 0:
                continue  # a failure: the penalty is no measurement to judge a prediction by
            self._errors.append(((math.log(value) - mean) / max(sd, 1e-9)) ** 2)
        if len(self._errors) >= TRUST_WINDOW // 2:
            self.trusted = float(np.mean(self._errors)) <= TRUST_LIMIT

    # -- the choices
    def _explore_now(self) -> bool:
        every = self._explore if self.trusted else min(self._explore or DISTRUST_EVERY, 2)
        return every > 0 and self._calls % every == every - 1

    def _local_base(self, observed: list[tuple[int, float]]) -> list[tuple[int, float]]:
        """The measurements the local moves start from: all of them, or with `restart=R` those
        since the last restart (one after R evaluations without improving the best)."""
        if not self._restart:
            return observed
        stalled = len(observed) - max(self._improved_at, self._restart_at)
        if stalled >= self._restart:
            self._restart_at = len(observed)
        return observed[self._restart_at :] or observed

    def _model_free(
        self, observed: list[tuple[int, float]] | None, child_rows: list[int], fresh: np.ndarray
    ) -> int:
        """A model-free trial: a one-step neighbour of the best measured candidate (`l`) while
        the best has not improved for `stall` evaluations and such a neighbour is left, else in
        turn a uniformly drawn fresh candidate (`u`) and the GA's own child (`c`)."""
        kind = self._free[self.explored % len(self._free)]
        self.explored += 1
        if observed and self._stall and len(observed) - self._improved_at >= self._stall:
            kind = "l"
        if kind == "l" and observed:
            best = min(self._local_base(observed), key=lambda o: o[1])[0]
            near = self._near(best, steps=1, dims=1)
            near = near[fresh[near]]
            if len(near):
                return int(self._rng.choice(near))
        if kind == "c" and child_rows:
            return child_rows[0]
        return int(self._rng.choice(np.flatnonzero(fresh)))

    def pick(self, children: list[dict[str, int]]) -> dict[str, int] | None:
        """This trial's candidate (an encoding), or None where nothing is fresh."""
        self._build()
        self._calls += 1
        self._check_trust()
        fresh = self._fresh_mask()
        if not fresh.any():
            return None
        pool = self._ledger.candidates()
        observed = self._observed()
        if observed:
            best = min(v for _, v in observed)
            if best < self._best_seen:
                self._best_seen, self._improved_at = best, len(observed)
        child_rows = self._children_rows(children, fresh)
        if observed is None or self._explore_now():
            return dict(pool[self._model_free(observed, child_rows, fresh)][0])
        parts = [np.asarray(child_rows, dtype=np.int64), self._uniform(fresh)]
        if self._local:
            parts.append(self._neighbours(self._local_base(observed), fresh))
        rows = np.unique(np.concatenate(parts))
        if not len(rows):  # no child, no neighbour and no uniform sample (pool=0): any fresh one
            rows = np.flatnonzero(fresh)
        if not observed:
            if self._start == "default" and self._default is not None and fresh[self._default]:
                return dict(pool[self._default][0])
            return dict(pool[int(self._rng.choice(rows))][0])
        if self._start == "default" and [r for r, _ in observed] == [self._default]:
            # the default alone measured: the uniform draw the search started from before
            return dict(pool[int(self._rng.choice(np.flatnonzero(fresh)))][0])
        gain = self._score(observed, rows)
        best = int(np.lexsort((self._rng.random(len(rows)), -gain))[0])
        row = int(rows[best])
        if self._adapt and isinstance(self._model, KernelModel):
            self._picked[row] = self._model.to_log(
                float(self._last_mean[best]), float(self._last_sd[best])
            )
        return dict(pool[row][0])

    # the GA's hooks
    def best_fresh(self) -> dict[str, int] | None:
        return self.pick([])

    def choose(self, children: list[dict[str, int]]) -> dict[str, int] | None:
        return self.pick(children)
