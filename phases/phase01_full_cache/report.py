"""phase01's summary table and figure, built from result rows."""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def summarize(rows: pd.DataFrame) -> pd.DataFrame:
    """Mean accuracy per (task, needle count, length), over all turns and over the last turn."""
    rows = rows[rows.get("skipped").isna()] if "skipped" in rows else rows
    grouped = rows.groupby(["task", "num_keys", "length"])
    return grouped.agg(
        samples=("index", "count"),
        accuracy=("accuracy", "mean"),
        last_turn_accuracy=("last_turn_accuracy", "mean"),
        prompt_tokens=("prompt_tokens", "mean"),
    ).reset_index().round(4)


def write_figure(summary: pd.DataFrame, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(summary["task"]))
    fig, axes = plt.subplots(1, len(tasks), figsize=(4 * len(tasks), 3.4), sharey=True, squeeze=False)
    for ax, task in zip(axes[0], tasks):
        part = summary[summary["task"] == task]
        for num_keys, line in part.groupby("num_keys"):
            ax.plot(line["length"], line["accuracy"], marker="o", label=f"{num_keys} needles")
        ax.set_xscale("log", base=2)
        ax.set_title(task)
        ax.set_xlabel("context length (tokens)")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("gold values recovered (full cache)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path
