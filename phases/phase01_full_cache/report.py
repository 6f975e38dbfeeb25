"""phase01's summary table (n, mean and a 95% bootstrap interval per cell), its compact per-sample rows,
and the figure with its intervals, built from result rows."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from idlekv.intervals import interval_columns

KEYS = ["task", "num_keys", "length"]
COMPACT = [*KEYS, "index", "accuracy", "last_turn_accuracy", "prompt_tokens"]


def answered(rows: pd.DataFrame) -> pd.DataFrame:
    return rows[rows["skipped"].isna()] if "skipped" in rows else rows


def summarize(rows: pd.DataFrame) -> pd.DataFrame:
    """Per (task, needle count, length): accuracy over all turns with n and its interval, the last turn's, the prompt length."""
    rows = answered(rows)
    summary = interval_columns(rows, KEYS)
    last = interval_columns(rows, KEYS, "last_turn_accuracy")
    summary["last_turn_accuracy"] = last["last_turn_accuracy"]
    summary["last_turn_ci_low"], summary["last_turn_ci_high"] = last["ci_low"], last["ci_high"]
    summary["prompt_tokens"] = rows.groupby(KEYS, sort=True)["prompt_tokens"].mean().round(1).to_numpy()
    return summary


def compact(rows: pd.DataFrame) -> pd.DataFrame:
    """The per-sample rows the summary is computed from (no answer text)."""
    return answered(rows)[COMPACT].sort_values([*KEYS, "index"])


def write_figure(summary: pd.DataFrame, path: Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(summary["task"]))
    fig, axes = plt.subplots(1, len(tasks), figsize=(4 * len(tasks), 3.6), sharey=True, squeeze=False)
    for ax, task in zip(axes[0], tasks):
        part = summary[summary["task"] == task]
        for num_keys, line in part.groupby("num_keys"):
            errors = [line["accuracy"] - line["ci_low"], line["ci_high"] - line["accuracy"]]
            ax.errorbar(line["length"], line["accuracy"], yerr=errors, marker="o", markersize=3, capsize=2, elinewidth=0.8,
                        label=f"{num_keys} needles")
        ax.set_xscale("log", base=2)
        ax.set_title(task)
        ax.set_xlabel("context length (tokens)")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("gold values recovered (full cache)")
    if title:
        fig.suptitle(f"{title} (n={int(summary['n'].max())} per point; bars: 95% bootstrap intervals)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path
