"""Recorded landscapes: the table format (read and write), the replay space and objective, and the
sampler comparison on them. `study.record` writes tables, `study.replay` searches them.

table      the CSV format: RESULT_COLUMNS (written), RESULT_NAMES (read as results), load_table
space      ReplaySpace, RowCandidate: a table's flat integer space, as samplers see a live one
objective  ReplayObjective, run_study: one optuna study that looks latencies up
metrics    best-so-far, evaluations to the target, random search's exact expectations, score
compare    every sampler x seed on every table, and its markdown table
plot       best-so-far against evaluations
"""

from study.landscape.compare import compare, markdown
from study.landscape.metrics import (
    BUDGET_FRACTIONS,
    WITHIN,
    best_so_far,
    evaluations_to,
    expected_random_best,
    expected_random_evaluations,
    score,
    strategy_best,
)
from study.landscape.objective import ReplayObjective, RunResult, run_study, sampler_config
from study.landscape.plot import plot
from study.landscape.space import ReplaySpace, RowCandidate
from study.landscape.table import (
    RESULT_COLUMNS,
    RESULT_NAMES,
    ReplayError,
    Table,
    load_table,
    merge_rounds,
    param_columns,
    row_for,
    write_table,
)

__all__ = [
    "BUDGET_FRACTIONS",
    "RESULT_COLUMNS",
    "RESULT_NAMES",
    "WITHIN",
    "ReplayError",
    "ReplayObjective",
    "ReplaySpace",
    "RowCandidate",
    "RunResult",
    "Table",
    "best_so_far",
    "compare",
    "evaluations_to",
    "expected_random_best",
    "expected_random_evaluations",
    "load_table",
    "markdown",
    "merge_rounds",
    "param_columns",
    "plot",
    "row_for",
    "run_study",
    "sampler_config",
    "score",
    "strategy_best",
    "write_table",
]
