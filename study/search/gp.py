"""A Gaussian process over a fixed candidate list, for the GA's screening on large spaces.

Why not only the additive model (surrogate.py): on real GPU landscapes (tile sizes x block
sizes x memory flags) the effect of one parameter depends on others (a tile size that is best
with shared memory is worst without it), and a one-hot model learns nothing about block 80 from
block 64 and 96. This model keeps what the additive one gets right and adds both, letting the
data say how much of each it needs:

- per dimension, a similarity of two values in [0, 1]: 1 for equal values; for an ordered
  dimension (numeric, 3 values or more) exp(-|rank distance| / lengthscale) with ranks scaled to
  [0, 1], so neighbouring tile sizes inform each other; 0 for different categorical values. An
  inert dimension (a tunable of another variant) is a category of its own per kind of candidate
  (per set of active dimensions): two SDPA rows are alike in a tile size neither has, an SDPA
  row and a Python-loop row are not;
- the kernel of two candidates: (1 - rho) x the mean of their per-dimension similarities (an
  additive function of the dimensions) + rho x the mean over pairs of dimensions of the products
  of two similarities (pairwise interactions), times an amplitude, plus noise;
- rho, the lengthscale and the noise are chosen by the marginal likelihood of the observations
  from a small grid and re-chosen as evaluations arrive: where the data shows no interaction,
  rho = 0 wins (an additive model); where it does, the interaction share grows.

Values are modelled as standardised log latency, the upper tail capped (a failed or a 30x slower
configuration should not decide the fit of the fast region). Costs: with m observations and a
pool of P candidates, one m x m Cholesky per grid point at a refit, and m x P similarities plus
one triangular solve per prediction: about 10 ms at m = 400, P = 1000.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

RHOS = (0.0, 0.3, 0.7)  # share of the pairwise-interaction part of the kernel
LENGTHSCALES = (0.03, 0.15, 0.5, 2.0)  # of ordered dimensions, in ranks scaled to [0, 1]
NOISES = (0.01, 0.05, 0.2)  # noise variance, in units of the standardised values' variance
AMPLITUDE = 1.0
ARD_FROM = 24  # observations before the dimensions' relevances are chosen (ard)
ARD_STEPS = (0.25, 4.0)  # the factors a relevance is tried with, one dimension at a time
ARD_GAIN = 1.0  # log evidence a change must add to be kept (against fitting noise)


class KernelModel:
    """A GP over candidates given as codes (candidates x dimensions, one index per value)."""

    def __init__(
        self,
        codes: np.ndarray,
        ordered: Sequence[bool],
        lengthscales: Sequence[float] = LENGTHSCALES,
        ard: bool = False,
        rhos: Sequence[float] = RHOS,
        noises: Sequence[float] = NOISES,
        sizes: Sequence[int] | None = None,
    ) -> None:
        """codes[i, d]: candidate i's value index in dimension d; ordered[d]: whether d is
        ordered; sizes[d]: its number of values (default: every code is one). A code at or
        beyond sizes[d] is no value of d but a category of its own (an inert dimension, one
        code per kind of candidate it is inert for): similar to itself only."""
        codes = np.asarray(codes, dtype=np.int64)
        live = [d for d in range(codes.shape[1]) if len(np.unique(codes[:, d])) > 1]
        self.codes = codes[:, live]
        self.ordered = [bool(ordered[d]) for d in live]
        top = self.codes.max(axis=0) + 1 if len(self.codes) else np.zeros(len(live), int)
        self.values = [
            int(sizes[d]) if sizes is not None else int(t) for d, t in zip(live, top, strict=True)
        ]
        self.dims = len(live)
        self.size = codes.shape[0]
        self._tables: dict[float, list[np.ndarray]] = {}
        self._feature_cache: dict[float, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self.lengthscales = tuple(lengthscales)
        self.rhos, self.noises = tuple(rhos), tuple(noises)
        self.hyper = (self.rhos[0], self.lengthscales[len(self.lengthscales) // 2], self.noises[1])
        self._fit: tuple[np.ndarray, Any, np.ndarray, float] | None = None
        self._rows = np.zeros(0, dtype=np.int64)
        self._chol: Any = None
        self._chol_hyper = self.hyper
        self._shift, self._scale = 0.0, 1.0
        self.ard = ard
        self.weights = np.ones(self.dims)  # relevance of each dimension (ard: chosen)
        self._chol_weights = self.weights.copy()

    # -- the kernel
    def _similarity(self, lengthscale: float) -> list[np.ndarray]:
        """Per dimension, the value x value similarity table."""
        if lengthscale not in self._tables:
            tables = []
            for d in range(self.dims):
                table = np.eye(int(self.codes[:, d].max()) + 1)
                real = self.values[d]
                if self.ordered[d] and real >= 3:
                    rank = np.arange(real) / (real - 1)
                    table[:real, :real] = np.exp(
                        -np.abs(rank[:, None] - rank[None, :]) / lengthscale
                    )
                tables.append(table)
            self._tables[lengthscale] = tables
        return self._tables[lengthscale]

    def _features(self, lengthscale: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(one-hot codes, similarity rows, squared similarity rows) of every candidate, the
        dimensions side by side: the similarity sums of two sets are then two matrix products."""
        if lengthscale not in self._feature_cache:
            tables = self._similarity(lengthscale)
            offsets = np.cumsum([0] + [len(t) for t in tables])
            self._offsets = offsets
            self._column_dim = np.repeat(np.arange(self.dims), [len(t) for t in tables])
            onehot = np.zeros((self.size, int(offsets[-1])))
            sim = np.zeros_like(onehot)
            for d, table in enumerate(tables):
                onehot[np.arange(self.size), offsets[d] + self.codes[:, d]] = 1.0
                sim[:, offsets[d] : offsets[d + 1]] = table[self.codes[:, d]]
            self._feature_cache[lengthscale] = (onehot, sim, sim * sim)
        return self._feature_cache[lengthscale]

    def _parts(
        self, a: np.ndarray, b: np.ndarray, lengthscale: float, weights: np.ndarray | None = None
    ) -> tuple[np.ndarray, ...]:
        """(weighted mean similarity, weighted mean pairwise product) between candidate rows a
        and b; the weights are the dimensions' relevances (all 1 without ard)."""
        onehot, sim, squared = self._features(lengthscale)
        w = self.weights if weights is None else weights
        right = onehot[b].T
        column = w[self._column_dim]
        total = (sim[a] * column) @ right  # sum over dimensions of w_d S_d(a, b)
        squares = (squared[a] * column * column) @ right  # ... of (w_d S_d(a, b))^2
        return self._normalise(total, squares, w)

    def _normalise(self, total: np.ndarray, squares: np.ndarray, w: np.ndarray) -> tuple:
        sum_w, sum_w2 = float(w.sum()), float((w * w).sum())
        additive = total / max(sum_w, 1e-12)
        if self.dims < 2:
            return additive, additive
        return additive, (total * total - squares) / max(sum_w * sum_w - sum_w2, 1e-12)

    @staticmethod
    def _combine(parts: tuple[np.ndarray, ...], rho: float) -> np.ndarray:
        additive, pairs = parts
        return AMPLITUDE * ((1.0 - rho) * additive + rho * pairs)

    # -- fitting and prediction
    def _kernel(self, a: np.ndarray, b: np.ndarray, hyper: tuple[float, float, float]) -> Any:
        return torch.from_numpy(self._combine(self._parts(a, b, hyper[1]), hyper[0]))

    def fit(self, rows: Sequence[int], log_values: Sequence[float], choose: bool = True) -> None:
        """Condition on observed candidates (their log values); with `choose`, pick the
        hyperparameters of the grid with the largest marginal likelihood first. Without, and
        when the observations only grew, the Cholesky factor is extended (O(m^2) per new one)."""
        rows_a = np.asarray(rows, dtype=np.int64)
        m = len(rows_a)
        values, self._shift, self._scale = transform(np.asarray(log_values, dtype=float))
        y = torch.from_numpy(values)[:, None]
        chol = None
        if choose and m >= 4:
            best: tuple[float, tuple[float, float, float], Any] | None = None
            eye = torch.eye(m, dtype=torch.float64)
            for ls in self.lengthscales:
                parts = self._parts(rows_a, rows_a, ls)
                for rho in self.rhos if self.dims > 1 else (0.0,):
                    base = torch.from_numpy(self._combine(parts, rho))
                    for noise in self.noises:
                        factor, info = torch.linalg.cholesky_ex(base + (noise + 1e-8) * eye)
                        if int(info) != 0:
                            continue
                        alpha = torch.cholesky_solve(y, factor)
                        evidence = -0.5 * float((y * alpha).sum()) - float(
                            torch.log(torch.diagonal(factor)).sum()
                        )
                        if best is None or evidence > best[0]:
                            best = (evidence, (rho, ls, noise), factor)
            if best is not None:
                self.hyper, chol = best[1], best[2]
                if self.ard and m >= ARD_FROM and self.dims > 1:
                    kept = self._choose_weights(rows_a, y)
                    chol = chol if kept is None else kept
        if chol is None:
            chol = self._extend(rows_a)
        self._rows, self._chol, self._chol_hyper = rows_a, chol, self.hyper
        self._chol_weights = self.weights.copy()
        alpha = torch.cholesky_solve(y, chol)[:, 0].numpy()
        self._fit = (rows_a, chol, alpha, float(values.min()) if m else 0.0)

    def _choose_weights(self, rows: np.ndarray, y: Any) -> Any:
        """One sweep over the dimensions: each one's relevance times 1/4 or 4 where that adds
        ARD_GAIN to the log evidence (the other hyperparameters as chosen). Returns the factor
        of the kept weights (None: none changed)."""
        rho, ls, noise = self.hyper
        onehot, sim, squared = self._features(ls)
        per_dim = []
        for d in range(self.dims):
            cols = slice(int(self._offsets[d]), int(self._offsets[d + 1]))
            s = sim[rows, cols] @ onehot[rows, cols].T
            per_dim.append((s, squared[rows, cols] @ onehot[rows, cols].T))
        eye = torch.eye(len(rows), dtype=torch.float64)

        def score(w: np.ndarray) -> tuple[float, Any]:
            total = sum(wd * s for wd, (s, _) in zip(w, per_dim, strict=True))
            squares = sum(wd * wd * q for wd, (_, q) in zip(w, per_dim, strict=True))
            k = torch.from_numpy(self._combine(self._normalise(total, squares, w), rho))
            factor, info = torch.linalg.cholesky_ex(k + (noise + 1e-8) * eye)
            if int(info) != 0:
                return -math.inf, None
            alpha = torch.cholesky_solve(y, factor)
            value = -0.5 * float((y * alpha).sum()) - float(torch.log(torch.diagonal(factor)).sum())
            return value, factor

        weights = self.weights.copy()
        best, kept = score(weights)
        changed = False
        for d in range(self.dims):
            for step in ARD_STEPS:
                trial = weights.copy()
                trial[d] = min(16.0, max(1 / 16, trial[d] * step))
                value, factor = score(trial)
                if value > best + ARD_GAIN:
                    weights, best, kept, changed = trial, value, factor, True
        if not changed:
            return None
        self.weights = weights
        return kept

    def _extend(self, rows: np.ndarray) -> Any:
        """The Cholesky factor of the kernel of `rows` under the current hyperparameters,
        extended from the previous one when `rows` only appends to its rows."""
        noise = self.hyper[2] + 1e-8
        old = self._rows
        k = len(old)
        if (
            self._chol is not None
            and self._chol_hyper == self.hyper
            and np.array_equal(self._chol_weights, self.weights)
            and 0 < k <= len(rows)
            and np.array_equal(rows[:k], old)
        ):
            if k == len(rows):
                return self._chol
            new = rows[k:]
            cross = self._kernel(old, new, self.hyper)  # (k, b)
            block = self._kernel(new, new, self.hyper) + noise * torch.eye(len(new)).double()
            left = torch.linalg.solve_triangular(self._chol, cross, upper=False)  # (k, b)
            corner, info = torch.linalg.cholesky_ex(block - left.T @ left)
            if int(info) == 0:
                top = torch.cat([self._chol, torch.zeros(k, len(new), dtype=torch.float64)], 1)
                return torch.cat([top, torch.cat([left.T, corner], 1)], 0)
        kernel = self._kernel(rows, rows, self.hyper)
        return torch.linalg.cholesky(kernel + noise * torch.eye(len(rows)).double())

    def predict(self, among: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """(mean, sd) of the latent standardised log value of the candidates `among`."""
        among_a = np.asarray(among, dtype=np.int64)
        if self._fit is None or not len(self._fit[0]):
            return np.zeros(len(among_a)), np.full(len(among_a), math.sqrt(AMPLITUDE))
        rows_a, chol, alpha, _ = self._fit
        cross = self._kernel(rows_a, among_a, self.hyper)  # (m, P)
        mean = cross.numpy().T @ alpha
        v = torch.linalg.solve_triangular(chol, cross, upper=False)
        var = AMPLITUDE - (v * v).sum(0).numpy()
        return mean, np.sqrt(np.maximum(var, 1e-12))

    def expected_improvement(self, among: Sequence[int]) -> np.ndarray:
        """EI on the best (lowest) standardised observation; higher is better."""
        return self.scores(among)[0]

    def scores(self, among: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(expected improvement, latent mean, latent sd) of the candidates `among`."""
        mean, sd = self.predict(among)
        best = self._fit[3] if self._fit is not None else 0.0
        z = torch.from_numpy((best - mean) / sd)
        phi = torch.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
        return sd * (z * torch.special.ndtr(z) + phi).numpy(), mean, sd

    def to_log(self, mean: float, sd: float) -> tuple[float, float]:
        """A latent (mean, sd) as the (mean, sd) of a measurement in log units (with noise)."""
        noise = self.hyper[2]
        return mean * self._scale + self._shift, math.sqrt(sd * sd + noise) * self._scale


def transform(y: np.ndarray) -> tuple[np.ndarray, float, float]:
    """(standardised values, shift, scale): log values with the upper tail capped at the median
    plus twice its distance from the best (slow and failed configurations count as slow without
    dominating the fit), minus their mean, over their sd."""
    if not y.size:
        return y, 0.0, 1.0
    lo, med = float(y.min()), float(np.median(y))
    y = np.minimum(y, med + 2.0 * max(med - lo, 1e-9))
    shift, sd = float(y.mean()), float(y.std())
    scale = sd if sd > 1e-12 else 1.0
    return (y - shift) / scale, shift, scale
