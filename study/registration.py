"""What the variants are, read in a throwaway contained process: the study never imports a plugin.

A plugin is candidate code, and importing it would run it in the process that holds the study,
its storage and its verdicts. So the registry (built-ins and the plugins' `@register` calls) is
read by `python -m study.registration REQUEST` in a process started like a worker
(study/measure/contain.py), and comes back as JSON data: each variant's name, tunables, tags,
source module, plugin file, and for each problem asked about its `supports` answer and the
`valid` answer of every combination of the choices the space will use. `VariantInfo` answers
`supports(problem)` and `valid(problem, params)` from that data, so study/space.py builds the
space from it unchanged. The data is a plugin's word about itself: it decides what is tried,
never a verdict.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kernels import PluginError, Problem
from study.errors import one_line
from study.measure import contain

PLAIN = (type(None), bool, int, float, str)
RAISED = "valid() raised "
TIMEOUT_S = 300.0
LIMIT_BYTES = 256 * 1024 * 1024


def problem_key(problem: Problem) -> str:
    return json.dumps(problem.to_dict(), sort_keys=True)


@dataclass(frozen=True)
class VariantInfo:
    """One registered variant as data (duck-types `kernels.Variant` for study/space.py)."""

    name: str
    params: dict[str, list[Any]]
    tags: tuple[str, ...] = ()
    source: str = ""
    description: str = ""
    plugin: str | None = None
    asked: dict[str, list[Any]] = field(default_factory=dict)  # the choices valid() answered
    answers: dict[str, dict[str, Any]] = field(default_factory=dict)  # problem key -> answer

    def _answer(self, problem: Problem) -> dict[str, Any]:
        answer = self.answers.get(problem_key(problem))
        if answer is None:
            raise LookupError(f"{self.name}: the registration was not read for {problem}")
        return answer

    def supports(self, problem: Problem) -> str | None:
        return self._answer(problem)["supports"]

    def valid(self, problem: Problem, params: Mapping[str, Any]) -> str | None:
        answer = self._answer(problem)
        index = 0
        for name, choices in self.asked.items():
            value = params[name]
            found = [i for i, c in enumerate(choices) if c == value and type(c) is type(value)]
            if not found:
                raise LookupError(f"{self.name}: valid() was not asked about {name}={value!r}")
            index = index * len(choices) + found[0]
        reason = answer["invalid"].get(index)
        return None if reason is None else answer["reasons"][reason]

    def valid_error(self, problem: Problem, params: Mapping[str, Any]) -> str | None:
        """Where the variant's own valid() raised for `params`: the exception, as one typed
        line (its `valid` answer is then "valid() raised ...": a study leaves it out)."""
        reason = self.valid(problem, params)
        if reason is None or not reason.startswith(RAISED):
            return None
        return reason.removeprefix(RAISED)


# -- the child: imports the plugins, answers, exits --------------------------------------------
def _plain(name: str, param: str, values: list[Any]) -> list[Any]:
    for value in values:
        if not isinstance(value, PLAIN) or value != value:  # NaN never equals itself
            raise PluginError(
                f"variant {name!r}: param {param!r} has choice {value!r}; choices must be plain "
                "values (None, bool, int, float, str)"
            )
    return values


def _union(first: list[Any], more: list[Any]) -> list[Any]:
    """`first`, then the values of `more` it lacks (bool and int told apart)."""
    out = list(first)
    for value in more:
        if not any(v == value and type(v) is type(value) for v in out):
            out.append(value)
    return out


def _answers(variant: Any, problem: Problem, asked: dict[str, list[Any]]) -> dict[str, Any]:
    reasons: dict[str, int] = {}
    invalid: list[list[int]] = []
    supports = variant.supports(problem)
    if supports is None:
        for index, combo in enumerate(itertools.product(*asked.values())):
            try:
                reason = variant.valid(problem, dict(zip(asked, combo, strict=True)))
            except Exception as exc:  # a plugin's check must not take the reading down
                reason = RAISED + one_line(exc, typed=True)
            if reason:
                invalid.append([index, reasons.setdefault(str(reason), len(reasons))])
    return {"supports": supports, "reasons": list(reasons), "invalid": invalid}


def collect(request: dict[str, Any]) -> dict[str, Any]:
    """The registry as data (runs in the child)."""
    import kernels

    plugin_of: dict[str, str] = {}
    for path in request["plugins"]:
        plugin_of.update(dict.fromkeys(kernels.load_plugin(path), path))
    problems = [Problem.from_dict(p) for p in request["problems"]]
    for problem in problems:
        if problem.device.startswith("cuda"):
            import torch

            torch.cuda.set_device(torch.device(problem.device))
            break
    overrides = request.get("overrides") or {}
    extra = request.get("extra") or {}
    variants = {}
    for name, variant in kernels.variants().items():
        mine = dict(overrides.get(name) or {})
        asked = {
            p: _plain(name, p, _union(mine.get(p, values), extra.get(p, [])))
            for p, values in variant.params.items()
        }
        variants[name] = {
            "params": {p: _plain(name, p, list(v)) for p, v in variant.params.items()},
            "asked": asked,
            "tags": [str(t) for t in variant.tags],
            "source": str(variant.source),
            "description": str(variant.description),
            "plugin": plugin_of.get(name),
            "answers": {problem_key(p): _answers(variant, p, asked) for p in problems},
        }
    return {"variants": variants, "skipped": kernels.skipped_modules()}


def child_main(argv: list[str]) -> int:
    """`python -m study.registration REQUEST`: the JSON reply on stdout, nothing else there."""
    contain.set_subreaper()
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # whatever a plugin prints goes to stderr
    sys.stdout = sys.stderr
    request = json.loads(argv[0])
    if any(p.get("device") == "cpu" for p in request["problems"]):
        # as in the worker: Triton reads it at import, and the CPU runs it interpreted
        os.environ.setdefault("TRITON_INTERPRET", "1")
    try:
        reply: dict[str, Any] = collect(request)
    except PluginError as exc:
        reply = {"error": str(exc)}
    contain.kill_descendants()
    out.write(json.dumps(reply))
    out.flush()
    return 0


# -- the study's side --------------------------------------------------------------------------
def _malformed(what: str) -> PluginError:
    return PluginError(f"the plugins' registration came back malformed ({what})")


def _info(name: str, data: Any) -> VariantInfo:
    if not isinstance(data, dict):
        raise _malformed(f"variant {name!r} is not an object")
    try:
        answers = {
            str(key): {
                "supports": None if a["supports"] is None else str(a["supports"]),
                "reasons": [str(r) for r in a["reasons"]],
                "invalid": {int(i): int(r) for i, r in a["invalid"]},
            }
            for key, a in dict(data["answers"]).items()
        }
        return VariantInfo(
            name=name,
            params={str(p): list(v) for p, v in dict(data["params"]).items()},
            tags=tuple(str(t) for t in data["tags"]),
            source=str(data["source"]),
            description=str(data["description"]),
            plugin=None if data["plugin"] is None else str(data["plugin"]),
            asked={str(p): list(v) for p, v in dict(data["asked"]).items()},
            answers=answers,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise _malformed(f"variant {name!r}: {type(exc).__name__} {exc}") from None


class Reading:
    """The registry being read in its child process; `result()` waits for it.

    Started before the workers, so that both imports of torch overlap.
    """

    def __init__(
        self,
        plugins: Sequence[str],
        problems: Sequence[Problem] = (),
        overrides: Mapping[str, Any] | None = None,
        sandbox: contain.Sandbox | None = None,
        extra: Mapping[str, list[Any]] | None = None,
    ) -> None:
        """`overrides`: space.params ({variant: {param: [choices]}}, replacing the registered
        choices); `extra`: {param: [values]} asked about too, for every variant with that param
        (study.evaluate's params.P=V)."""
        request = {
            "plugins": [str(p) for p in plugins],
            "problems": [p.to_dict() for p in problems],
            "overrides": {k: dict(v) for k, v in dict(overrides or {}).items()},
            "extra": {k: list(v) for k, v in dict(extra or {}).items()},
        }
        self.process = contain.spawn(
            [sys.executable, "-m", "study.registration", json.dumps(request)],
            sandbox or contain.Sandbox(),
            gpu=any(p.device.startswith("cuda") for p in problems),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )

    def result(self, timeout_s: float = TIMEOUT_S) -> dict[str, VariantInfo]:
        try:
            out, err = self.process.popen.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise PluginError(
                f"reading the variants' registration took over {timeout_s:g} s "
                "(a plugin hangs at import?)"
            ) from None
        self.process.kill()  # anything it left behind
        if self.process.popen.returncode != 0 or len(out) > LIMIT_BYTES:
            lines = err.decode(errors="replace").strip().splitlines()
            raise PluginError(
                f"reading the variants' registration failed ({self.process.exit_reason()}): "
                f"{lines[-1] if lines else 'no output'}"
            )
        try:
            reply = json.loads(out)
        except ValueError as exc:
            raise _malformed(f"not JSON: {exc}") from None
        if not isinstance(reply, dict):
            raise _malformed("not an object")
        if "error" in reply:
            raise PluginError(str(reply["error"]).splitlines()[0] if reply["error"] else "error")
        variants = reply.get("variants")
        if not isinstance(variants, dict):
            raise _malformed("no variants")
        return {str(name): _info(str(name), data) for name, data in variants.items()}


def read(
    plugins: Sequence[str],
    problems: Sequence[Problem] = (),
    overrides: Mapping[str, Any] | None = None,
    sandbox: contain.Sandbox | None = None,
    extra: Mapping[str, list[Any]] | None = None,
) -> dict[str, VariantInfo]:
    """Every registered variant (built-ins and `plugins`) as data, answered for `problems`."""
    return Reading(plugins, problems, overrides, sandbox, extra).result()


if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1:]))
