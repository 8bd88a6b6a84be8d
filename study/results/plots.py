"""The run folder's figures: best-so-far over trials, latency by variant, parameter importance.

Each figure is written twice: a PNG (matplotlib, Agg backend, for report.md and plain viewers) and
an interactive plotly figure in `plots.html` (one file, plotly.js inlined once, works offline).
Every point is a measured trial of the study (`report.measured`: COMPLETE and `measured`);
copies of an earlier verdict are left out so that no measurement counts twice. A figure that
cannot be drawn (too few trials, one variant, importance undefined) is skipped with a one-line
reason, never faked.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from study.results.report import measured

log = logging.getLogger(__name__)

BEST_PNG = "best_so_far.png"
VARIANT_PNG = "latency_by_variant.png"
IMPORTANCE_PNG = "param_importance.png"
HTML = "plots.html"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def best_so_far_png(trials: list[FrozenTrial], path: Path) -> None:
    plt = _pyplot()
    xs = [t.number for t in trials]
    ys = [float(t.value) for t in trials]  # type: ignore[arg-type]
    best, running = [], float("inf")
    for y in ys:
        running = min(running, y)
        best.append(running)
    base = [  # the raw SDPA medians: how much the machine drifted from trial to trial
        (t.number, float(t.user_attrs["baseline_latency_us"]))
        for t in trials
        if t.user_attrs.get("baseline_latency_us")
    ]
    references = sorted(
        {float(r) for t in trials if (r := t.user_attrs.get("reference_baseline_us"))}
    )
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    ax.scatter(xs, ys, s=14, color="tab:blue", label="candidate value (measured trial)")
    for reference in references:
        ax.axhline(reference, color="tab:red", linewidth=1, label="SDPA default (the reference)")
    ax.step(xs, best, where="post", color="tab:blue", linewidth=1.5, label="best so far")
    if base:
        ax.scatter(
            [b[0] for b in base],
            [b[1] for b in base],
            s=10,
            marker="x",
            color="tab:gray",
            label="SDPA default raw median, same trial",
        )
    ax.set_yscale("log")
    ax.set_xlabel("trial number")
    ax.set_ylabel("value: reference SDPA / paired speedup (us, log)")
    ax.set_title("Best value so far")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _by_variant(trials: list[FrozenTrial]) -> dict[str, list[float]]:
    groups: dict[str, list[float]] = {}
    for t in trials:
        groups.setdefault(str(t.user_attrs.get("variant", "?")), []).append(float(t.value))  # type: ignore[arg-type]
    baselines = [  # in value terms SDPA is the study's reference
        float(t.user_attrs["reference_baseline_us"])
        for t in trials
        if t.user_attrs.get("reference_baseline_us")
    ]
    if baselines:
        groups["(SDPA default: the reference)"] = baselines
    return dict(sorted(groups.items(), key=lambda kv: min(kv[1])))


def latency_by_variant_png(trials: list[FrozenTrial], path: Path) -> None:
    plt = _pyplot()
    groups = _by_variant(trials)
    names = list(groups)
    fig, ax = plt.subplots(figsize=(7, 0.5 * len(names) + 1.6), dpi=110)
    data = [groups[n] for n in names]
    try:  # matplotlib >= 3.10 (`vert` is deprecated from 3.11)
        ax.boxplot(data, orientation="horizontal", widths=0.6, showfliers=False)
    except TypeError:
        ax.boxplot(data, vert=False, widths=0.6, showfliers=False)
    for i, name in enumerate(names, 1):
        ax.scatter(groups[name], [i] * len(groups[name]), s=10, alpha=0.7, color="tab:blue")
    ax.set_yticks(range(1, len(names) + 1), names, fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("value per trial: reference SDPA / paired speedup (us, log scale)")
    ax.set_title("Latency by variant (measured trials; all mutations)")
    ax.grid(True, axis="x", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def importances(study: optuna.Study) -> dict[str, float]:
    """Parameter importances (PED-ANOVA: needs no scikit-learn); raises where undefined."""
    trials = measured(study)
    if len(trials) < 3:
        raise ValueError(f"{len(trials)} measured trials; importance needs at least 3")
    values = {float(t.value) for t in trials}  # type: ignore[arg-type]
    if len(values) < 2:
        raise ValueError("every measured trial has the same value")
    return optuna.importance.get_param_importances(
        study,
        evaluator=_evaluator(),
    )


def _evaluator():
    return optuna.importance.PedAnovaImportanceEvaluator()


def importance_png(imp: dict[str, float], path: Path) -> None:
    plt = _pyplot()
    names = list(imp)[::-1]
    fig, ax = plt.subplots(figsize=(7, 0.4 * len(names) + 1.6), dpi=110)
    ax.barh(names, [imp[n] for n in names], color="tab:blue")
    ax.set_xlabel("importance (PED-ANOVA, normalised; trials of the study)")
    ax.set_title("Parameter importance over COMPLETE trials (encoded dimensions)")
    ax.tick_params(axis="y", labelsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _html_figures(study: optuna.Study, trials: list[FrozenTrial]) -> list[tuple[str, Any]]:
    import plotly.graph_objects as go
    from optuna import visualization as vis

    figures: list[tuple[str, Any]] = []
    history = vis.plot_optimization_history(study, target_name="value_us")
    history.update_yaxes(type="log")
    figures.append(("Optimization history (all COMPLETE trials)", history))
    box = go.Figure()
    for name, values in _by_variant(trials).items():
        box.add_trace(go.Box(x=values, name=name, boxpoints="all", orientation="h"))
    box.update_layout(
        title="Latency by variant (measured trials)",
        xaxis_title="value: reference SDPA / paired speedup (us)",
        xaxis_type="log",
        showlegend=False,
    )
    figures.append(("Latency by variant", box))
    try:
        importances(study)
        figures.append(
            ("Parameter importance", vis.plot_param_importances(study, evaluator=_evaluator()))
        )
    except Exception as exc:  # too few trials, constant values, one-valued dimensions
        log.info("no parameter-importance figure: %s", exc)
    try:
        figures.append(("Slice plot", vis.plot_slice(study)))
    except Exception as exc:
        log.info("no slice figure: %s", exc)
    return figures


def write_plots(study: optuna.Study, run_dir: Path) -> dict[str, Any]:
    """Write the figures into `run_dir`; return {"files": [...], "skipped": {figure: reason}}."""
    run_dir = Path(run_dir)
    trials = measured(study)
    files: list[str] = []
    skipped: dict[str, str] = {}
    if not trials:
        reason = "no measured COMPLETE trial"
        return {"files": [], "skipped": {"all figures": reason}}
    steps = [
        (BEST_PNG, lambda p: best_so_far_png(trials, p)),
        (VARIANT_PNG, lambda p: latency_by_variant_png(trials, p)),
    ]
    for name, draw in steps:
        try:
            draw(run_dir / name)
            files.append(name)
        except Exception as exc:
            skipped[name] = f"{type(exc).__name__}: {exc}"
    try:
        importance_png(importances(study), run_dir / IMPORTANCE_PNG)
        files.append(IMPORTANCE_PNG)
    except Exception as exc:
        skipped[IMPORTANCE_PNG] = f"{type(exc).__name__}: {exc}".splitlines()[0]
    try:
        figures = _html_figures(study, trials)
        parts = [
            "<!doctype html><html><head><meta charset='utf-8'>",
            f"<title>{study.study_name}</title></head><body>",
            f"<h1>{study.study_name}</h1>",
            "<p>Measured figures of this study; value: the reference SDPA latency / the "
            "paired speedup, in microseconds.</p>",
        ]
        for i, (title, fig) in enumerate(figures):
            parts.append(f"<h2>{title}</h2>")
            parts.append(fig.to_html(full_html=False, include_plotlyjs=(i == 0)))
        parts.append("</body></html>")
        (run_dir / HTML).write_text("\n".join(parts))
        files.append(HTML)
    except Exception as exc:
        skipped[HTML] = f"{type(exc).__name__}: {exc}".splitlines()[0]
    return {"files": files, "skipped": skipped}
