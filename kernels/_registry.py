"""The variant registry: the `register` decorator, discovery of built-in modules, user plugins.

Every variant, built-in or a user's, is a function `build(problem, **params) -> run(q, k, v)`
registered with `@register(name, params={...})`. Built-in variants are the public modules of the
`kernels.builtin` package (files not starting with `_`), imported on first use: adding a variant
is adding one module.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import logging
import pkgutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kernels._problem import Problem

log = logging.getLogger(__name__)

Runner = Callable[..., Any]
Builder = Callable[..., Runner]
Support = Callable[[Problem], "str | None"]
Validity = Callable[..., "str | None"]


class PluginError(Exception):
    """A user's plugin file could not be loaded; the message is one line for the user."""


@dataclass(frozen=True)
class Variant:
    """One registered attention implementation and its tunables."""

    name: str
    build_fn: Builder
    params: dict[str, list[Any]]
    supports_fn: Support | None = None
    valid_fn: Validity | None = None
    description: str = ""
    source: str = ""
    tags: tuple[str, ...] = field(default_factory=tuple)

    def supports(self, problem: Problem) -> str | None:
        """None where the variant can run `problem`, else a one-line reason."""
        if self.supports_fn is None:
            return None
        try:
            return self.supports_fn(problem)
        except Exception as exc:  # a plugin's check must not take the study down
            return f"supports() raised {type(exc).__name__}: {exc}"

    def valid(self, problem: Problem, params: dict[str, Any]) -> str | None:
        """None where this parameter combination makes sense for `problem`, else why not."""
        if self.valid_fn is None:
            return None
        return self.valid_fn(problem, **params)

    def build(self, problem: Problem, **params: Any) -> Runner:
        unknown = set(params) - set(self.params)
        if unknown:
            raise TypeError(f"{self.name}: unknown params {sorted(unknown)}")
        return self.build_fn(problem, **params)

    def default_params(self) -> dict[str, Any]:
        return {name: choices[0] for name, choices in self.params.items()}


_REGISTRY: dict[str, Variant] = {}
_BUILTINS_LOADED = False
_BUILTIN_SKIPPED: dict[str, str] = {}


def register(
    name: str,
    params: dict[str, list[Any]] | None = None,
    supports: Support | None = None,
    valid: Validity | None = None,
    description: str = "",
    tags: tuple[str, ...] = (),
) -> Callable[[Builder], Builder]:
    """Register `build(problem, **params)` as variant `name`.

    params: tunable name -> list of choices (the first is the representative default).
    supports(problem): None or a reason the variant cannot run the problem (left out before the
    study starts). valid(problem, **params): None or a reason one combination is meaningless.
    """
    choices = _choices(name, params)

    def decorator(build: Builder) -> Builder:
        signature = inspect.signature(build)
        missing = [p for p in choices if p not in signature.parameters]
        if missing and not any(
            p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values()
        ):
            raise ValueError(f"variant {name!r}: build() does not take params {missing}")
        source = getattr(build, "__module__", "")
        previous = _REGISTRY.get(name)
        if previous is not None and previous.source != source:
            raise ValueError(
                f"variant {name!r} is already registered by {previous.source}; pick another name"
            )
        _REGISTRY[name] = Variant(
            name=name,
            build_fn=build,
            params=choices,
            supports_fn=supports,
            valid_fn=valid,
            description=description or (build.__doc__ or "").strip().split("\n")[0],
            source=source,
            tags=tuple(tags),
        )
        return build

    return decorator


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _choices(name: str, params: Any) -> dict[str, list[Any]]:
    """`params` as {tunable: [choices]}; a mistake in its form is named with the form expected
    (not Python's "'int' object is not iterable" from deep inside)."""
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise ValueError(
            f"variant {name!r}: params must be a dict {{name: [choices]}}, "
            f"got {type(params).__name__} {_shown(params)}"
        )
    choices = {}
    for key, values in params.items():
        if not isinstance(key, str) or not key.isidentifier():
            raise ValueError(f"variant {name!r}: param name {_shown(key)} is not an identifier")
        if not isinstance(values, list | tuple | range):
            raise ValueError(
                f"variant {name!r}: params[{key!r}] must be a list of choices, "
                f"got {type(values).__name__} {_shown(values)}"
            )
        if not values:
            raise ValueError(f"variant {name!r}: param {key!r} has no choices")
        choices[key] = list(values)
    return choices


def _load_builtins() -> None:
    global _BUILTINS_LOADED
    if _BUILTINS_LOADED:
        return
    _BUILTINS_LOADED = True
    package = importlib.import_module("kernels.builtin")
    for info in pkgutil.iter_modules(package.__path__):
        if info.name.startswith("_"):
            continue
        try:
            importlib.import_module(f"kernels.builtin.{info.name}")
        except ImportError as exc:  # an optional dependency is missing: say so, go on
            _BUILTIN_SKIPPED[info.name] = f"{type(exc).__name__}: {exc}"
            log.info("kernels.builtin.%s not loaded: %s", info.name, exc)


def variants() -> dict[str, Variant]:
    """All registered variants by name (built-ins plus loaded plugins)."""
    _load_builtins()
    return dict(_REGISTRY)


def skipped_modules() -> dict[str, str]:
    """Built-in modules that could not be imported, with the reason."""
    _load_builtins()
    return dict(_BUILTIN_SKIPPED)


def load_plugin(path: str | Path) -> list[str]:
    """Import a user's file so that its `@register` calls run; return the names it added."""
    _load_builtins()
    file = Path(path).expanduser().resolve()
    if not file.is_file():
        raise PluginError(f"plugin file not found: {path}")
    digest = hashlib.sha1(str(file).encode()).hexdigest()[:10]
    module_name = f"kernel_study_plugin_{file.stem}_{digest}"
    if module_name in sys.modules:
        return [v.name for v in _REGISTRY.values() if v.source == module_name]
    before = set(_REGISTRY)
    spec = importlib.util.spec_from_file_location(module_name, file)
    if spec is None or spec.loader is None:
        raise PluginError(f"cannot import plugin {path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(module_name, None)
        for name in set(_REGISTRY) - before:
            del _REGISTRY[name]
        line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise PluginError(f"plugin {path} failed to import: {type(exc).__name__}: {line}") from exc
    added = sorted(set(_REGISTRY) - before)
    if not added:
        raise PluginError(f"plugin {path} registers no variant (use @kernels.register)")
    return added
