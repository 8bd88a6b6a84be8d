"""The replay figures: best-so-far curves, evaluations to the target, random search's exact
expectations and the autotuning-methodology score. Pure functions of latencies (nan: failed)."""

from __future__ import annotations

import math

import numpy as np

WITHIN = 0.02  # "reached the optimum": within 2% of the table's best latency
BUDGET_FRACTIONS = (0.10, 0.20, 0.50)


def best_so_far(trace: list[float], worst: float) -> np.ndarray:
    """The best latency after each evaluation (a failed one counts as the worst)."""
    values = np.array([worst if math.isnan(v) else v for v in trace], dtype=float)
    return np.minimum.accumulate(values) if len(values) else values


def evaluations_to(trace: list[float], target: float) -> float:
    """Evaluations until the first latency within the target (inf: never)."""
    for i, v in enumerate(trace):
        if not math.isnan(v) and v <= target:
            return float(i + 1)
    return math.inf


def expected_random_best(latency: np.ndarray, k: int) -> float:
    """Exact E[min] of k distinct rows drawn uniformly without replacement (failed = worst).

    P(the minimum is the i-th smallest of n) = C(n-i, k-1) / C(n, k); its first term is k/n and
    each next one is the previous times (n-i-k+1)/(n-i), so the weights are a cumulative product
    of ratios below 1: exact to a few ulps per step in floating point, O(n) per k (the
    big-integer binomials took seconds per k on a 4,000-row table).
    """
    worst = float(np.nanmax(latency))
    values = np.sort(np.where(np.isnan(latency), worst, latency))
    n = len(values)
    k = max(1, min(k, n))
    i = np.arange(1, n - k + 1, dtype=float)  # ratios P(i+1)/P(i), i = 1 .. n-k
    weights = np.concatenate(([k / n], (k / n) * np.cumprod((n - i - k + 1) / (n - i))))
    return float(np.dot(weights, values[: n - k + 1]))


def strategy_best(traces: list[list[float]], k: int, worst: float) -> float:
    """The mean over seeds of the best latency found within k evaluations."""
    bests = []
    for trace in traces:
        curve = best_so_far(trace, worst)
        bests.append(float(curve[min(k, len(curve)) - 1]) if len(curve) else worst)
    return float(np.mean(bests))


def score(strategy: float, random_best: float, optimum: float) -> float:
    """(strategy - random) / (optimum - random): 1 finds the optimum, 0 is random search."""
    if random_best - optimum <= 0:
        return 1.0 if strategy <= optimum else 0.0
    return (strategy - random_best) / (optimum - random_best)


def scored_budgets(rows: int, budget: int) -> tuple[list[int], list[int]]:
    """(budgets scored, budgets left out): 10/20/50% of the rows where the runs reach them (at
    most `budget` evaluations), plus the budget itself when a fraction lies beyond it. Scoring a
    sampler's best at its budget against random's expected best at a larger k would compare
    unequal efforts."""
    fractions = [max(1, math.ceil(f * rows)) for f in BUDGET_FRACTIONS]
    scored = [k for k in fractions if k <= budget]
    unreached = [k for k in fractions if k > budget]
    if unreached and budget not in scored:
        scored.append(budget)
    return scored, unreached


def expected_random_evaluations(latency: np.ndarray, target: float) -> float:
    """E[draws without replacement until a row within the target] = (n + 1) / (good + 1)."""
    good = int((latency <= target).sum())
    return (len(latency) + 1) / (good + 1)
