"""Study callbacks: stop a study after `study.patience` trials without improvement."""

from __future__ import annotations

import optuna
from optuna.trial import FrozenTrial, TrialState


class Patience:
    """Stop the study after `patience` finished trials in a row that did not improve the best.

    A trial improves when it is COMPLETE with a value strictly below every earlier COMPLETE
    value of the study (the first COMPLETE trial improves). PRUNED and FAIL trials, and repeats
    of a known candidate, do not improve: they count towards the patience. Trials finished
    before the callback was created (a resumed study) set the best but are not counted.
    """

    def __init__(self, patience: int) -> None:
        if patience < 1:
            raise ValueError(f"patience must be >= 1, got {patience}")
        self.patience = int(patience)
        self.best: float | None = None
        self.since = 0
        self.started = False

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if not self.started:
            self.started = True
            earlier = [
                t.value
                for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                if t.number != trial.number and t.value is not None
            ]
            self.best = min(earlier) if earlier else None
        value = trial.value if trial.state == TrialState.COMPLETE else None
        if value is not None and (self.best is None or value < self.best):
            self.best = value
            self.since = 0
            return
        self.since += 1
        if self.since >= self.patience:
            study.stop()
