"""The replay objective and the runner: one optuna study over a recorded table.

The objective looks the value up (`value_us`, as a live study's, or `latency_us` in a table
recorded before it: `Table.value_column`): a row with one ends COMPLETE (value and the user
attr of that name, plus `variant` when the table has that column); a row without one ends
PRUNED with `rejected_by=recorded_failure`, as the live objective treats an incorrect
candidate. A proposal that matches no row ends PRUNED with `rejected_by=not_in_table` and costs
no evaluation.

Cost is counted in evaluations: DISTINCT table rows evaluated (failed rows included: live, they
are measured too). A repeated row is a trial but no evaluation (live, the objective copies the
earlier verdict without measuring). `budget` stops a study after that many evaluations; every
study also stops when every row was evaluated, after `max_trials` trials (default: 20 x rows +
100), after `timeout_s` seconds, or after `patience` trials without improvement.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import optuna
from omegaconf import OmegaConf

from study.config import CONF_DIR
from study.landscape.metrics import WITHIN
from study.landscape.space import ReplaySpace
from study.landscape.table import Table
from study.search.callbacks import Patience


class ReplayObjective:
    """Looks latencies up; keeps the evaluation trace (latency per distinct row, in order)."""

    def __init__(
        self,
        space: ReplaySpace,
        budget: int | None = None,
        study: optuna.Study | None = None,
        stop_at: float | None = None,
        min_evaluations: int = 0,
    ) -> None:
        self.space = space
        self.table = space.table
        self.budget = budget
        self.stop_at = stop_at
        self.min_evaluations = min_evaluations
        self.evaluated: dict[int, int] = {}  # row -> trial number that evaluated it
        self.trace: list[float] = []
        self.started = time.monotonic()
        if study is not None:  # a resumed study: its rows are already evaluated
            for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
                row = t.user_attrs.get("row")
                if t.state.is_finished() and row is not None and row not in self.evaluated:
                    self.evaluated[int(row)] = t.number
                    self.trace.append(float(self.table.latency[int(row)]))

    @property
    def evaluations(self) -> int:
        return len(self.trace)

    def best(self) -> float:
        finite = [v for v in self.trace if not math.isnan(v)]
        return min(finite) if finite else math.inf

    def _should_stop(self) -> bool:
        n = self.evaluations
        if n >= self.table.size or (self.budget is not None and n >= self.budget):
            return True
        return (
            self.stop_at is not None and n >= self.min_evaluations and self.best() <= self.stop_at
        )

    def __call__(self, trial: optuna.Trial) -> float:
        encoded = self.space.suggest(trial)
        candidate = self.space.decode(encoded)
        trial.set_user_attr("spec_key", candidate.key())
        if candidate.row is None:
            trial.set_user_attr("rejected_by", "not_in_table")
            trial.set_user_attr("measured", False)
            raise optuna.TrialPruned("not in the table")
        row = candidate.row
        trial.set_user_attr("row", row)
        if self.table.variant is not None:
            trial.set_user_attr("variant", self.table.variant[row])
        if row in self.evaluated:
            trial.set_user_attr("measured", False)
            trial.set_user_attr("duplicate_of", self.evaluated[row])
        else:
            self.evaluated[row] = trial.number
            self.trace.append(float(self.table.latency[row]))
            trial.set_user_attr("measured", True)
        trial.set_user_attr("evaluations", self.evaluations)
        if self._should_stop():
            trial.study.stop()
        latency = float(self.table.latency[row])
        if math.isnan(latency):
            trial.set_user_attr("rejected_by", "recorded_failure")
            if self.table.notes[row]:
                trial.set_user_attr("detail", self.table.notes[row][:200])
            raise optuna.TrialPruned("recorded failure")
        trial.set_user_attr(self.table.value_column, latency)
        return latency


# -- running studies ------------------------------------------------------------------------------
def sampler_config(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """conf/sampler/NAME.yaml with the sampler.<option>=V overrides: as a live study gets it."""
    path = CONF_DIR / "sampler" / f"{name}.yaml"
    cfg = OmegaConf.to_container(OmegaConf.load(path)) if path.is_file() else {"name": name}
    assert isinstance(cfg, dict)
    return cfg | options


@dataclass
class RunResult:
    sampler: str
    seed: int
    trace: list[float]
    trials: int
    trials_to_target: int | None
    study: optuna.Study


def run_study(
    table: Table,
    sampler_name: str,
    seed: int,
    storage: Any = None,
    study_name: str | None = None,
    budget: int | None = None,
    max_trials: int | None = None,
    patience: int | None = None,
    timeout_s: float | None = None,
    sampler_options: dict[str, Any] | None = None,
    stop_at: float | None = None,
    min_evaluations: int = 0,
    space: ReplaySpace | None = None,
    wrap: Any = None,
) -> RunResult:
    """One replay study. Returns the evaluation trace and the trial count. `wrap(sampler)`, when
    given, returns the sampler the study uses (bench/real_landscapes.py times the sampler's own
    calls through it)."""
    from study.search import make_sampler

    space = space or ReplaySpace(table)
    sampler = make_sampler(sampler_config(sampler_name, sampler_options or {}), space, seed)
    if wrap is not None:
        sampler = wrap(sampler)
    if storage is None:
        storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(
        storage=storage,
        sampler=sampler,
        study_name=study_name,
        direction="minimize",
        load_if_exists=study_name is not None,
    )
    if study_name is not None:
        study.set_user_attr("replay", {"table": str(table.path), "sampler": sampler_name})
    objective = ReplayObjective(space, budget, study, stop_at, min_evaluations)
    target = table.optimum * (1 + WITHIN)
    reached: list[int] = []

    def watch(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if not reached and objective.best() <= target:
            reached.append(trial.number + 1)

    callbacks: list[Any] = [watch]
    if patience:
        callbacks.append(Patience(patience))
    if objective._should_stop():
        return RunResult(sampler_name, seed, objective.trace, 0, None, study)
    before = len(study.trials)
    study.optimize(
        objective,
        n_trials=max_trials if max_trials is not None else 20 * table.size + 100,
        timeout=timeout_s,
        callbacks=callbacks,
    )
    trials = len(study.trials) - before
    return RunResult(
        sampler_name, seed, objective.trace, trials, reached[0] if reached else None, study
    )
