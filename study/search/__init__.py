"""The search: samplers over the flat integer space (live `SearchSpace` or replay `ReplaySpace`).

The public face is the registry `FACTORIES` (name -> factory), `SAMPLERS` (its names),
`make_sampler` and `option_error`; each sampler family lives in a private module, described
there:

- cmaes, catcma: CMA-ES with margin and CatCMA with margin (_cmaes.py);
- ga, ga_plain: our genetic algorithm, with and without surrogate screening (_ga.py);
- tpe, random: Optuna's TPE and a uniform draw, never re-spending a trial (_wrapped.py);
- grid: every distinct valid candidate once, in a seeded order (_grid.py);
- cmaes_optuna, nsga2: Optuna's own samplers, kept as baselines (_wrapped.py).

Every sampler but the two baselines hands a trial only candidates whose result is neither known
nor pending: what the study knows is one `Ledger` (study/search/ledger.py), which the ask/tell
driver (study/search/asktell.py), the wrapped samplers and the GA's screen read and write
through its methods. docs/samplers.md compares them on the recorded landscapes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from optuna.samplers import BaseSampler

from study.search._cmaes import make_catcma, make_cmaes
from study.search._ga import make_ga, make_ga_plain
from study.search._grid import make_grid
from study.search._wrapped import make_cmaes_optuna, make_nsga2, make_random, make_tpe

Factory = Callable[[Mapping[str, Any], Any, int], BaseSampler]
"""(sampler config, space, seed) -> a seeded sampler over that space."""

FACTORIES: Mapping[str, Factory] = {
    "cmaes": make_cmaes,
    "catcma": make_catcma,
    "ga": make_ga,
    "tpe": make_tpe,
    "random": make_random,
    "grid": make_grid,
    "ga_plain": make_ga_plain,
    "cmaes_optuna": make_cmaes_optuna,
    "nsga2": make_nsga2,
}
SAMPLERS = tuple(FACTORIES)
DEFAULT_SAMPLER = "ga"  # the one default: study.run's config (conf/config.yaml) and study.replay

__all__ = ["DEFAULT_SAMPLER", "FACTORIES", "SAMPLERS", "Factory", "make_sampler", "option_error"]


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


def make_sampler(sampler_cfg: Mapping[str, Any], space: Any, seed: int) -> BaseSampler:
    """Build the configured sampler, seeded."""
    reason = option_error(sampler_cfg)
    if reason is not None:
        raise ValueError(reason)
    name = sampler_cfg["name"]
    factory = FACTORIES.get(name)
    if factory is None:
        raise ValueError(f"unknown sampler {name!r}; choose one of: {', '.join(SAMPLERS)}")
    return factory(sampler_cfg, space, seed)
