"""CMA-ES samplers (the `cmaes` package), run by `KnownAwareSampler`.

- cmaes: CMA-ES with margin (`cmaes.CMAwM`) over the integer indices, every dimension an
  integer with step 1, initial mean at the centre and standard deviation a quarter of each
  dimension's range.
- catcma: `cmaes.CatCMAwM`: categorical dimensions (the variant, layouts, flags, any dimension
  with two values or non-numeric values) as categorical distributions, ordered ones (tile
  sizes, chunk sizes, thread counts) as integers with margin.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from study.search.asktell import KnownAwareSampler, Optimizer
from study.search.dimensions import dimension_sizes, dimension_values, is_categorical


class MarginCMA(Optimizer):
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


class CategoricalCMA(Optimizer):
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


def make_cmaes(sampler_cfg: Mapping[str, Any], space: Any, seed: int) -> KnownAwareSampler:
    dims = dimension_sizes(space)
    popsize = sampler_cfg.get("popsize")
    return KnownAwareSampler(space, seed, lambda s: MarginCMA(dims, s, popsize))


def make_catcma(sampler_cfg: Mapping[str, Any], space: Any, seed: int) -> KnownAwareSampler:
    dims = dimension_sizes(space)
    values = dimension_values(space)
    popsize = sampler_cfg.get("popsize")
    return KnownAwareSampler(space, seed, lambda s: CategoricalCMA(dims, values, s, popsize))
