"""The comparison's picture: best-so-far latency / optimum against evaluations, per table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from study.landscape.metrics import WITHIN, expected_random_best


def plot(result: dict[str, Any], path: Path) -> None:
    """Median and IQR over seeds per sampler, and random search's exact expectation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    entries = result["tables"]
    fig, axes = plt.subplots(1, len(entries), figsize=(6 * len(entries), 4.2), squeeze=False)
    for ax, entry in zip(axes[0], entries, strict=True):
        optimum = entry["optimum_us"]
        longest = 1
        for name, s in entry["samplers"].items():
            length = max(len(c) for c in s["curves"])
            padded = np.array(
                [c + [c[-1]] * (length - len(c)) if c else [np.nan] * length for c in s["curves"]]
            )
            rel = padded / optimum
            x = np.arange(1, length + 1)
            longest = max(longest, length)
            ax.plot(x, np.median(rel, axis=0), label=name)
            ax.fill_between(
                x, np.percentile(rel, 25, axis=0), np.percentile(rel, 75, axis=0), alpha=0.15
            )
        # random's expected best only where the runs are drawn, at most 200 points of it
        ks = np.unique(np.linspace(1, longest, min(longest, 200)).round().astype(int))
        latency = np.array(entry.get("_latency", []), dtype=float)
        if latency.size:
            ax.plot(
                ks,
                [expected_random_best(latency, int(k)) / optimum for k in ks],
                "k:",
                label="random (expected)",
            )
        ax.axhline(1 + WITHIN, color="grey", lw=0.8, ls="--", label="optimum + 2%")
        ax.set_title(Path(entry["table"]).name, fontsize=9)
        ax.set_xlabel("evaluations (distinct configurations)")
        ax.set_ylabel("best latency so far / optimum (median, IQR)")
        ax.set_yscale("log")
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
