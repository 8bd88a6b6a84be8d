"""Memory and execution mutations: each one changes what really runs, never just a label.

A mutation is a named knob with a list of choices, applied by the harness around a built
candidate in three places: the inputs it is given (`prepare_inputs`, e.g. a layout), the callable
that is timed (`wrap`, e.g. a `.contiguous()` pass that then counts in the time), and the global
context of its calls (`context`, e.g. the thread count, restored afterwards). The SDPA baseline of
the same trial gets the same inputs, so the ratio compares like with like.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from kernels import Problem

Tensors = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
Runner = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class Mutation:
    """A knob over how a candidate is run. Subclasses override the hooks they need."""

    name: str = ""
    doc: str = ""
    choices: tuple[Any, ...] = ()

    def supports(self, problem: Problem, value: Any) -> str | None:
        """None where `value` applies to the problem's device, else a one-line reason."""
        return (
            None if value in self.choices else f"{self.name}={value!r} is not one of {self.choices}"
        )

    def prepare_inputs(self, tensors: Tensors, value: Any) -> Tensors:
        return tensors

    def wrap(self, run: Runner, value: Any, problem: Problem) -> Runner:
        return run

    def wrap_baseline(self, baseline: Runner, value: Any, problem: Problem) -> Runner:
        """How the SDPA baseline of the same trial runs (e.g. also replayed from a CUDA graph)."""
        return baseline

    @contextlib.contextmanager
    def context(self, value: Any, problem: Problem) -> Iterator[None]:
        yield


def bshd_view(t: torch.Tensor) -> torch.Tensor:
    """Same values stored as (B, S, H, D), viewed as (B, H, S, D): what fused QKV gives."""
    return t.transpose(1, 2).contiguous().transpose(1, 2)


class Layout(Mutation):
    """bhsd: contiguous (B,H,S,D). bshd: strided views of (B,S,H,D) storage handed to the kernel as
    they are. bshd_contiguous: the same views, copied to contiguous inside the timed call."""

    def prepare_inputs(self, tensors: Tensors, value: Any) -> Tensors:
        if value == "bhsd":
            return tuple(t.contiguous() for t in tensors)  # type: ignore[return-value]
        return tuple(bshd_view(t) for t in tensors)  # type: ignore[return-value]

    def wrap(self, run: Runner, value: Any, problem: Problem) -> Runner:
        if value != "bshd_contiguous":
            return run

        def contiguous_then_run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            return run(q.contiguous(), k.contiguous(), v.contiguous())

        return contiguous_then_run


class Threads(Mutation):
    """CPU intra-op thread count for the candidate's calls (0: torch's default); restored after."""

    def supports(self, problem: Problem, value: Any) -> str | None:
        if problem.is_cuda and value != 0:
            return "a thread count applies to the CPU only"
        if not isinstance(value, int) or value < 0:
            return f"threads={value!r} must be an integer >= 0"
        return None

    @contextlib.contextmanager
    def context(self, value: Any, problem: Problem) -> Iterator[None]:
        if not value:
            yield
            return
        before = torch.get_num_threads()
        torch.set_num_threads(int(value))
        try:
            yield
        finally:
            torch.set_num_threads(before)


MUTATIONS: dict[str, type[Mutation]] = {
    "layout": Layout,
    "threads": Threads,
}
LAYOUTS = ("bhsd", "bshd", "bshd_contiguous")


def make(name: str, choices: list[Any]) -> Mutation:
    if name not in MUTATIONS:
        raise KeyError(f"unknown mutation {name!r}; known: {', '.join(sorted(MUTATIONS))}")
    if name == "layout":
        bad = [c for c in choices if c not in LAYOUTS]
        if bad:
            raise KeyError(f"layout choices {bad} unknown; known: {', '.join(LAYOUTS)}")
    cls = MUTATIONS[name]
    return cls(name=name, doc=(cls.__doc__ or "").strip(), choices=tuple(choices))


def default_value(name: str) -> Any:
    """The value that means 'no mutation'."""
    return {"layout": "bhsd", "threads": 0}.get(name)


class Applied:
    """The mutations of one candidate, applied in a fixed order."""

    def __init__(self, chosen: dict[str, Any], problem: Problem) -> None:
        self.problem = problem
        self.items = [(make(name, [value]), value) for name, value in sorted(chosen.items())]

    def prepare_inputs(self, tensors: Tensors) -> Tensors:
        for mutation, value in self.items:
            tensors = mutation.prepare_inputs(tensors, value)
        return tensors

    def wrap(self, run: Runner) -> Runner:
        for mutation, value in self.items:
            run = mutation.wrap(run, value, self.problem)
        return run

    def wrap_baseline(self, baseline: Runner) -> Runner:
        for mutation, value in self.items:
            baseline = mutation.wrap_baseline(baseline, value, self.problem)
        return baseline

    @contextlib.contextmanager
    def context(self) -> Iterator[None]:
        with contextlib.ExitStack() as stack:
            for mutation, value in self.items:
                stack.enter_context(mutation.context(value, self.problem))
            yield
