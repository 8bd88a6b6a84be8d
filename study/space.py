"""The search space: variants x their tunables x mutations, flat and integer-encoded.

Encoding (what every sampler sees): one integer dimension `variant` (index into the space's
variant list), one integer dimension `<variant>.<param>` per tunable of every variant (index into
its choices), and one `mut.<mutation>` per mutation. Every trial suggests every dimension, so the
space has a fixed dimension, as CMA-ES requires.

Conditional parameters: the tunables of the variants that were not chosen are inert in that
trial. The effective candidate (variant, its own params, the mutations) is what is built and
measured; two trials that differ only in inert dimensions have the same effective candidate and
are measured once (the objective looks the second up). Combinations a variant declares
meaningless (`valid`) or mutations that do not apply are left out of the enumeration (grid) and
end PRUNED with `rejected_by=invalid_params` without running when a sampler proposes them.

So are the combinations in UNVERIFIED: each part runs on its own, together they have never run
on a GPU. Where a space could offer one, build_space names it in `excluded` (printed before the
study starts); `python -m study.selfcheck` on a GPU runs each once, unscored, and a rule goes
once a GPU run has shown its combination correct.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import optuna
from optuna.distributions import IntDistribution

from kernels import Problem
from kernels import mutations as mut
from study.errors import UserError

log = logging.getLogger(__name__)


class VariantLike(Protocol):
    """What the space needs of a variant: `kernels.Variant`, or the data study/registration.py
    reads in a child process (the study process never imports a plugin)."""

    name: str
    params: dict[str, list[Any]]
    tags: tuple[str, ...]
    source: str

    def supports(self, problem: Problem) -> str | None: ...

    def valid(self, problem: Problem, params: dict[str, Any]) -> str | None: ...


class SpaceError(UserError):
    """The space cannot be built from the config (one line for the user)."""


@dataclass(frozen=True)
class Candidate:
    """An effective candidate: the plain dict that is built, checked and timed."""

    variant: str
    params: dict[str, Any] = field(default_factory=dict)
    mutations: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "variant": self.variant,
            "params": dict(self.params),
            "mutations": dict(self.mutations),
        }

    def key(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, default=str)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Candidate:
        return cls(data["variant"], dict(data.get("params", {})), dict(data.get("mutations", {})))

    def label(self) -> str:
        parts = [f"{k}={v}" for k, v in self.params.items()]
        parts += [f"{k}={v}" for k, v in self.mutations.items() if v != mut.default_value(k)]
        return self.variant + (f"({', '.join(parts)})" if parts else "")


BASELINE_VARIANT = "sdpa"  # the default SDPA call: what a user runs today, and the baseline


def is_default(candidate: Candidate) -> bool:
    """SDPA as a model calls it today: the baseline's variant, no tunable, no mutation."""
    named = {f"mut.{n}": v for n, v in candidate.mutations.items()} | dict(candidate.params)
    return is_default_point(candidate.variant, named)


def is_default_point(variant: str, named: Mapping[str, Any]) -> bool:
    """`is_default` on a table row's text: its variant and its non-empty columns by name
    (`mut.<mutation>` for a mutation; anything else is a tunable, never default)."""
    return variant == BASELINE_VARIANT and all(
        name.startswith("mut.") and str(value) == str(mut.default_value(name[4:]))
        for name, value in named.items()
    )


@dataclass(frozen=True)
class Unverified:
    """A combination of tunables and mutations left out of every space until a GPU run has
    verified it (see the module docstring); `params` match by name in any variant."""

    params: dict[str, Any]
    mutations: dict[str, Any]
    reason: str

    def matches(self, candidate: Candidate) -> bool:
        return all(candidate.params.get(k, _ABSENT) == v for k, v in self.params.items()) and all(
            candidate.mutations.get(k, _ABSENT) == v for k, v in self.mutations.items()
        )

    def label(self) -> str:
        parts = {**self.mutations, **self.params}
        return " with ".join(f"{k}={v}" for k, v in parts.items())


_ABSENT = object()
UNVERIFIED: tuple[Unverified, ...] = (
    Unverified(
        {"mode": "reduce-overhead"},
        {"graph": "on"},
        "never run on a GPU: graph=on captures a CUDA graph around torch.compile's own "
        "CUDA-graph trees (a capture inside a capture)",
    ),
    Unverified(
        {},
        {"graph": "on", "l2": "kv"},
        "never run on a GPU: l2=kv sets its window on the host around each call, and a graph "
        "replay does not pass through that code (the captured kernels may or may not keep it)",
    ),
)


def unverified_reason(candidate: Candidate) -> str | None:
    """Why `candidate` is left out as an unverified combination, or None."""
    for rule in UNVERIFIED:
        if rule.matches(candidate):
            return f"{rule.label()}: {rule.reason}"
    return None


@dataclass
class SearchSpace:
    problem: Problem
    variants: list[VariantLike]
    choices: dict[str, dict[str, list[Any]]]
    mutations: dict[str, list[Any]]
    excluded: dict[str, str] = field(default_factory=dict)

    # -- encoding -------------------------------------------------------------------------
    def distributions(self) -> dict[str, IntDistribution]:
        cached = self.__dict__.get("_dims")
        if cached is None:
            cached = {"variant": IntDistribution(0, len(self.variants) - 1)}
            for variant in self.variants:
                for param, values in self.choices[variant.name].items():
                    cached[f"{variant.name}.{param}"] = IntDistribution(0, len(values) - 1)
            for name, values in self.mutations.items():
                cached[f"mut.{name}"] = IntDistribution(0, len(values) - 1)
            self.__dict__["_dims"] = cached
        return dict(cached)

    def suggest(self, trial: optuna.Trial) -> dict[str, int]:
        return {
            name: trial.suggest_int(name, dist.low, dist.high)
            for name, dist in self.distributions().items()
        }

    def decode(self, encoded: dict[str, int]) -> Candidate:
        variant = self.variants[int(encoded["variant"])]
        params = {
            p: values[int(encoded[f"{variant.name}.{p}"])]
            for p, values in self.choices[variant.name].items()
        }
        muts = {m: values[int(encoded[f"mut.{m}"])] for m, values in self.mutations.items()}
        return Candidate(variant.name, params, muts)

    def encode(self, candidate: Candidate) -> dict[str, int]:
        """The flat encoding of a candidate; inert dimensions at 0."""
        encoded = dict.fromkeys(self.distributions(), 0)
        encoded["variant"] = [v.name for v in self.variants].index(candidate.variant)
        for p, value in candidate.params.items():
            encoded[f"{candidate.variant}.{p}"] = self.choices[candidate.variant][p].index(value)
        for m, value in candidate.mutations.items():
            encoded[f"mut.{m}"] = self.mutations[m].index(value)
        return encoded

    def active_encoding(self, candidate: Candidate) -> dict[str, int]:
        """The dimensions that matter to this candidate (its variant's tunables, the mutations),
        as indices: what a model of the landscape may use; inert ones are left out."""
        encoded = self.encode(candidate)
        own = {"variant"} | {f"{candidate.variant}.{p}" for p in candidate.params}
        own |= {f"mut.{m}" for m in candidate.mutations}
        return {name: index for name, index in encoded.items() if name in own}

    # -- validity and enumeration -----------------------------------------------------------
    def _mutation(self, name: str) -> mut.Mutation:
        made = self.__dict__.setdefault("_mutation_objects", {})
        if name not in made:
            made[name] = mut.make(name, self.mutations[name])
        return made[name]

    def _mutation_reason(self, variant: VariantLike, name: str, value: Any) -> str | None:
        mutation = self._mutation(name)
        return mutation.supports(self.problem, value) or mutation.applies(variant, value)

    def invalid_reason(self, candidate: Candidate) -> str | None:
        variant = next(v for v in self.variants if v.name == candidate.variant)
        reason = variant.valid(self.problem, candidate.params)
        if reason:
            return reason
        for name, value in candidate.mutations.items():
            reason = self._mutation_reason(variant, name, value)
            if reason:
                return reason
        return unverified_reason(candidate)

    def default_index(self) -> int | None:
        """Where SDPA at its defaults (`is_default`) is in candidates(), if the space holds it."""
        return next((i for i, c in enumerate(self.candidates()) if is_default(c)), None)

    def candidates(self) -> list[Candidate]:
        """Every distinct valid effective candidate (what an exhaustive search measures).

        Mutation validity depends on the variant and the value only, so it is checked once per
        (variant, mutation, value) rather than once per candidate: spaces of 10^5 candidates
        enumerate in about a second.
        """
        cached = self.__dict__.get("_candidates")
        if cached is not None:
            return list(cached)
        found = []
        mut_names = list(self.mutations)
        for variant in self.variants:
            allowed = [
                [v for v in self.mutations[m] if self._mutation_reason(variant, m, v) is None]
                for m in mut_names
            ]
            names = list(self.choices[variant.name])
            # unverified combinations: those of mutations alone are dropped from the mutation
            # combinations once; those with tunables are checked per candidate of the variants
            # that have those tunables
            mut_only = [r for r in UNVERIFIED if not r.params]
            with_params = [r for r in UNVERIFIED if r.params and set(r.params) <= set(names)]
            mut_combos = [
                dict(zip(mut_names, combo, strict=True)) for combo in itertools.product(*allowed)
            ]
            mut_combos = [
                m for m in mut_combos if not any(r.matches(Candidate("", {}, m)) for r in mut_only)
            ]
            for values in itertools.product(*(self.choices[variant.name][p] for p in names)):
                params = dict(zip(names, values, strict=True))
                if variant.valid(self.problem, params):
                    continue
                for muts in mut_combos:
                    candidate = Candidate(variant.name, params, dict(muts))
                    if not any(r.matches(candidate) for r in with_params):
                        found.append(candidate)
        self.__dict__["_candidates"] = found
        return list(found)

    def digest(self) -> str:
        """Short hash of the encoding: a study is tied to one space."""
        blob = json.dumps(
            {
                "variants": [v.name for v in self.variants],
                "choices": self.choices,
                "mutations": self.mutations,
            },
            sort_keys=True,
            default=str,
        )
        return hashlib.sha1(blob.encode()).hexdigest()[:8]

    def describe(self) -> list[str]:
        lines = []
        for v in self.variants:
            tunables = ", ".join(f"{p}={vals}" for p, vals in self.choices[v.name].items())
            lines.append(f"{v.name}: {tunables or '(no tunables)'}")
        for m, vals in self.mutations.items():
            lines.append(f"mutation {m}: {vals}")
        for name, reason in self.excluded.items():
            lines.append(f"left out {name}: {reason}")
        return lines


def build_space(
    problem: Problem,
    space_cfg: dict[str, Any],
    registry: Mapping[str, VariantLike],
    supports: Callable[[list[str]], dict[str, str | None]],
) -> SearchSpace:
    """Select variants and mutations from the config and keep those that can run the problem.

    `supports(names)` answers, per variant name, None or why it cannot run the problem; the
    caller asks the worker on the real device, so that the answer is the device's.
    """
    wanted = list(space_cfg.get("variants") or [])
    unknown = [n for n in wanted + list(space_cfg.get("exclude") or []) if n not in registry]
    if unknown:
        raise SpaceError(
            f"unknown variant(s) {', '.join(unknown)}; registered: {', '.join(sorted(registry))}"
        )
    tags = set(space_cfg.get("tags") or [])
    names = wanted or [n for n, v in registry.items() if not tags or tags & set(v.tags)]
    names = [n for n in names if n not in set(space_cfg.get("exclude") or [])]
    if not wanted:
        dropped_tags = set(space_cfg.get("exclude_tags") or [])
        names = [n for n in names if not dropped_tags & set(registry[n].tags)]
    overrides = dict(space_cfg.get("params") or {})
    for vname, params in overrides.items():
        if vname not in registry:
            raise SpaceError(f"space.params names unknown variant {vname!r}")
        for p, values in dict(params).items():
            if p not in registry[vname].params:
                raise SpaceError(
                    f"space.params.{vname}.{p}: {vname} has params {sorted(registry[vname].params)}"
                )
            if not isinstance(values, list | tuple) or not values:
                raise SpaceError(f"space.params.{vname}.{p} must be a non-empty list")

    excluded: dict[str, str] = {}
    answers = supports(names) if names else {}
    kept: list[VariantLike] = []
    choices: dict[str, dict[str, list[Any]]] = {}
    for name in names:
        reason = answers.get(name)
        if reason:
            excluded[name] = reason
            continue
        variant = registry[name]
        params = {
            p: list(overrides.get(name, {}).get(p, vals)) for p, vals in variant.params.items()
        }
        combos = itertools.product(*params.values())
        if params and not any(
            variant.valid(problem, dict(zip(params, c, strict=True))) is None for c in combos
        ):
            excluded[name] = "no valid parameter combination for this problem"
            continue
        kept.append(variant)
        choices[name] = params

    muts: dict[str, list[Any]] = {}
    for name, values in dict(space_cfg.get("mutations") or {}).items():
        try:
            mutation = mut.make(name, list(values))
        except KeyError as exc:
            raise SpaceError(str(exc).strip("'\"")) from None
        applicable = [v for v in values if mutation.supports(problem, v) is None]
        dropped = [v for v in values if v not in applicable]
        if dropped:
            excluded[f"mutation {name}={dropped}"] = mutation.supports(problem, dropped[0]) or ""
        if applicable:
            muts[name] = applicable
    for rule in UNVERIFIED:
        if _could_offer(rule, kept, choices, muts):
            excluded[f"combination {rule.label()}"] = rule.reason
    for name, reason in excluded.items():
        log.info("left out %s: %s", name, reason)
    if not kept:
        detail = "; ".join(f"{k}: {v}" for k, v in excluded.items()) or "no variant selected"
        raise SpaceError(f"no variant can run this problem on this device ({detail})")
    return SearchSpace(problem, kept, choices, muts, excluded)


def _could_offer(
    rule: Unverified,
    variants: list[VariantLike],
    choices: dict[str, dict[str, list[Any]]],
    mutations: dict[str, list[Any]],
) -> bool:
    """True where some variant of the space has the rule's params among its choices and the
    space's mutations hold the rule's values (validity aside: the message is a notice)."""
    if any(value not in mutations.get(name, []) for name, value in rule.mutations.items()):
        return False
    return any(
        all(value in choices[v.name].get(name, []) for name, value in rule.params.items())
        for v in variants
    )
