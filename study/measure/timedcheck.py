"""What the judge checks of the timed calls: every output, and a secret sample in full.

Before each repetition (`before_rep`) the judge writes new values into the buffer of that
repetition on both sides: windows of an `InputPool` at secret offsets, the same values for the
candidate and for the baseline. After the repetition, the candidate's output (a copy the judge
took when its runner answered) is compared with the baseline's output of the same inputs
(`screen`: within `SCREEN_FACTOR` times the gate's bound for normal inputs, NaN where the
baseline has none counting as infinitely far), and a uniform random sample of `SAMPLE` outputs,
drawn with the judge's secret generator after each output is already in the judge's memory, is
checked at the end against the float64 reference of its inputs, within `SAMPLE_FACTOR` times
the gate's bound for inputs of the same distribution (the yardstick's six plain attentions per
sample would cost more than the timing they check; one set's yardstick differs from another's
of the same distribution by far less than 2x). No check schedule
exists before the fact, and every repetition's inputs look alike, so a candidate cannot be
honest only where it is looked at. A failure is `rejected_by: timed_output`.
"""

from __future__ import annotations

import random
from typing import Any

import torch

from kernels import Problem, reference_attention
from study.measure.gate import check_meta, check_values, synchronize
from study.measure.guard import Rejected
from study.measure.inputs import InputPool
from study.measure.shared import Arena, Desc

SCREEN_FACTOR = 8.0  # x the gate's bound: the screen never doubts an honest kernel
SAMPLE = 4  # timed outputs checked against the float64 reference, chosen after the fact
SAMPLE_FACTOR = 2.0  # x the gate's bound for normal inputs: the sample's bound (draw luck)


def screen(candidate: torch.Tensor, baseline: torch.Tensor, bound: float) -> str | None:
    """None where `candidate` is within `bound` of `baseline` everywhere, else what is wrong.

    One pass in float32 (every repetition pays it): a NaN anywhere makes the maximum NaN, an
    Inf where the baseline is finite makes it Inf, and either fails `err <= bound`.
    """
    err = float((candidate.float() - baseline.float()).abs().max()) if candidate.numel() else 0.0
    if err <= bound:
        return None
    if err != err or err == float("inf"):
        bad = int((~torch.isfinite(candidate) & torch.isfinite(baseline)).sum())
        return f"{bad} elements NaN/Inf where the baseline's are finite"
    return f"differs from the baseline by {err:.3e} > {bound:.3e}"


class TimedCheck:
    """The judge's `before_rep` hook and `sink` for paired timing (see the module docstring).

    `targets[i]` lists where buffer i lives: (arena, descs) of the candidate's and the
    baseline's copy.
    """

    def __init__(
        self,
        problem: Problem,
        pool: InputPool,
        targets: list[list[tuple[Arena, tuple[Desc, ...]]]],
        bound: float,
        seed: int,
    ) -> None:
        """`bound`: the gate's bound for normal inputs (the timed calls' distribution)."""
        self.problem = problem
        self.pool = pool
        self.targets = targets
        self.bound = bound
        self.rng = random.Random(seed)
        self.current: dict[int, int] = {}  # buffer index -> the repetition it now holds
        self.open: dict[int, dict[str, Any]] = {}  # repetition -> offsets, outputs so far
        self.sample: list[tuple[int, tuple[int, ...], torch.Tensor]] = []
        self.screened = 0
        self.checked = 0
        self.seen = 0

    def refill(self, index: int) -> tuple[int, ...]:
        """New values in buffer `index` on both sides; their secret offsets."""
        offsets = self.pool.draw()
        values = self.pool.values(offsets)
        with torch.no_grad():
            for arena, descs in self.targets[index]:
                for desc, value in zip(descs, values, strict=True):
                    arena.view(desc).copy_(value)
        synchronize(self.problem)
        return offsets

    def fill_all(self) -> None:
        """Values in every buffer before the warm-up calls."""
        for index in range(len(self.targets)):
            self.refill(index)

    def before_rep(self, rep: int, index: int) -> None:
        self.settle()
        self.current[index] = rep
        self.open[rep] = {"offsets": self.refill(index)}

    def sink(self, side: str, index: int, out: torch.Tensor | None, meta: Any) -> None:
        rep = self.current.get(index)
        if rep is not None and rep in self.open:
            self.open[rep][side] = (out, meta)

    def settle(self) -> None:
        """Screen every repetition whose two outputs are in."""
        for rep in sorted(self.open):
            entry = self.open[rep]
            if "candidate" in entry and "baseline" in entry:
                del self.open[rep]
                self._screen(rep, entry)

    def _screen(self, rep: int, entry: dict[str, Any]) -> None:
        out, meta = entry["candidate"]
        try:
            if out is None:
                check_meta(self.problem, meta or {})
                raise Rejected("type", "the output could not be read when the call returned")
            base = entry["baseline"][0]
            wrong = screen(out, base, SCREEN_FACTOR * self.bound) if base is not None else None
            if wrong:
                raise Rejected("tolerance", wrong)
        except Rejected as rejected:
            raise Rejected(
                "timed_output", f"timed repetition {rep}: {rejected.check}: {rejected.detail}"
            ) from None
        self.screened += 1
        self.seen += 1
        kept = (rep, entry["offsets"], out)
        if len(self.sample) < SAMPLE:
            self.sample.append(kept)
        else:
            slot = self.rng.randrange(self.seen)
            if slot < SAMPLE:
                self.sample[slot] = kept

    def finish(self) -> None:
        """Screen what is left, then check the sample against the float64 reference."""
        self.settle()
        for rep, offsets, out in sorted(self.sample, key=lambda item: item[0]):
            q, k, v = self.pool.values(offsets)
            ref = reference_attention(q, k, v, self.problem.causal, self.problem.scale)
            try:
                check_values(self.problem, out, ref, 0.0, bound=SAMPLE_FACTOR * self.bound)
            except Rejected as rejected:
                raise Rejected(
                    "timed_output", f"timed repetition {rep}: {rejected.check}: {rejected.detail}"
                ) from None
            self.checked += 1
