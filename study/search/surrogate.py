"""A cheap model of the landscape for the GA's offspring screening: additive, Bayesian, exact.

Attention landscapes are mostly additive in log latency: the variant sets the scale (SDPA's flash
path vs a Python loop is 30x), a layout or a thread count moves every variant by a similar
factor, and a tunable (a chunk size, a split count, a tile) has its own curve inside its variant.
So the model is a Bayesian linear regression of log(value) on one-hot indicators of each
candidate's *active* dimensions (the variant, its own tunables, the mutations), plus
variant x shared-dimension indicators with a tighter prior (a layout may help one variant and
hurt another). With a Gaussian prior and noise the posterior is Gaussian and exact, and so is
each candidate's expected improvement on the best value measured so far: the acquisition. It
is large where the model predicts a better value or is unsure (a variant never measured, a
tile size never tried) and small for what repeats known losses; `draw` (a Thompson sample of
the same posterior) is what the tests check it against.

Incorrect, failed and invalid results enter as the sampler's penalty (twice the worst correct
value plus one), so a region of failures looks slow, as it does to the GA's ranking.

Cost: one Cholesky and one inverse of a (features x features) matrix per trial (a few hundred
features at most) and, per candidate scored, its few active features' means and covariances:
milliseconds for thousands of candidates, nothing beside a kernel measurement.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

VARIANT_SD = 1.0  # prior sd (log units) of a variant's effect: variants differ by factors of e
MAIN_SD = 0.5  # of one value of a tunable or mutation
INTERACTION_SD = 0.2  # of a variant x shared-dimension value
NOISE_SD = 0.2  # residual: measurement noise plus what an additive model cannot say


class AdditiveModel:
    """Features of a fixed candidate list; `expected_improvement` scores them from the posterior."""

    def __init__(self, active: Sequence[dict[str, int]]) -> None:
        """active[i]: candidate i's active dimensions -> index (inert dimensions left out)."""
        ids: dict[tuple[Any, ...], int] = {}
        sds: list[float] = []

        def feature(key: tuple[Any, ...], sd: float) -> int:
            if key not in ids:
                ids[key] = len(ids)
                sds.append(sd)
            return ids[key]

        variants_of: dict[str, set[int]] = {}
        for enc in active:
            for name in enc:
                variants_of.setdefault(name, set()).add(enc.get("variant", 0))
        shared = {n for n, vs in variants_of.items() if n != "variant" and len(vs) > 1}
        rows: list[list[int]] = []
        for enc in active:
            row = []
            for name, index in sorted(enc.items()):
                row.append(feature((name, index), VARIANT_SD if name == "variant" else MAIN_SD))
                if name in shared:
                    row.append(feature(("x", enc.get("variant", 0), name, index), INTERACTION_SD))
            rows.append(row)
        width = max((len(r) for r in rows), default=0)
        self.size = len(rows)
        self.features = len(ids)
        self._index = np.full((len(rows), max(width, 1)), self.features, dtype=np.int64)
        for i, row in enumerate(rows):
            self._index[i, : len(row)] = row
        self._precision0 = np.diag(1.0 / np.square(np.array(sds, dtype=float)))

    def _design(self, rows: Sequence[int]) -> np.ndarray:
        design = np.zeros((len(rows), self.features + 1))
        for k, r in enumerate(rows):
            design[k, self._index[r]] = 1.0
        return design[:, : self.features]

    def _posterior(
        self, observed: Sequence[tuple[int, float]]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(weights' mean, Cholesky factor of their precision, centred observed log values).

        observed: (candidate index, value) with value > 0 (finite; the caller maps failures to
        its penalty). With nothing observed, the prior.
        """
        precision = self._precision0.copy()
        rhs = np.zeros(self.features)
        y = np.zeros(0)
        if observed:
            rows = [r for r, _ in observed]
            y = np.log(np.array([v for _, v in observed], dtype=float))
            y -= y.mean()
            design = self._design(rows)
            precision += design.T @ design / NOISE_SD**2
            rhs = design.T @ y / NOISE_SD**2
        chol = np.linalg.cholesky(precision)
        mean = np.linalg.solve(chol.T, np.linalg.solve(chol, rhs))
        return mean, chol, y

    def expected_improvement(
        self, observed: Sequence[tuple[int, float]], among: Sequence[int] | None = None
    ) -> np.ndarray:
        """The expected improvement (in log units) on the best observed value of the candidates
        `among` (default: all), in that order; higher is better. Exact under the Gaussian
        posterior: a candidate's mean and variance come from the few features it has."""
        mean, chol, y = self._posterior(observed)
        inverse = np.linalg.solve(chol.T, np.linalg.solve(chol, np.eye(self.features)))
        cov = np.zeros((self.features + 1, self.features + 1))
        cov[: self.features, : self.features] = inverse  # the padding column: no variance
        index = self._index if among is None else self._index[np.asarray(among, dtype=np.int64)]
        mu = np.append(mean, 0.0)[index].sum(axis=1)
        var = np.empty(len(index))
        for start in range(0, len(index), 4096):  # chunks: (rows, width, width) stays small
            idx = index[start : start + 4096]
            var[start : start + len(idx)] = cov[idx[:, :, None], idx[:, None, :]].sum(axis=(1, 2))
        sd = np.sqrt(np.maximum(var, 1e-12))
        best = float(y.min()) if y.size else 0.0
        z = torch.from_numpy((best - mu) / sd)
        # sd * (z Phi(z) + phi(z)); torch's ndtr keeps Phi accurate far into the tail
        phi = torch.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
        return sd * (z * torch.special.ndtr(z) + phi).numpy()

    def draw(self, observed: Sequence[tuple[int, float]], rng: np.random.Generator) -> np.ndarray:
        """A Thompson sample of every candidate's (centred) log value; lower is better.

        observed: (candidate index, value) with value > 0 (finite; the caller maps failures to
        its penalty). With nothing observed, a draw from the prior.
        """
        mean, chol, _ = self._posterior(observed)
        weights = mean + np.linalg.solve(chol.T, rng.standard_normal(self.features))
        padded = np.append(weights, 0.0)  # the padding column scores nothing
        return padded[self._index].sum(axis=1)


def log_safe(values: Sequence[float]) -> bool:
    """Whether every value can be modelled in log space (latencies are; a user objective may
    not be): otherwise the screen takes the GA's own child, or a uniform fresh candidate."""
    return all(math.isfinite(v) and v > 0 for v in values)
