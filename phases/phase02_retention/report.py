"""phase02's summary table (n, mean and a 95% bootstrap interval per cell), its compact per-sample rows,
and the figure (accuracy vs budget, one line per rule, with intervals)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from idlekv.intervals import interval_columns

KEYS = ["task", "mode", "rule", "budget_fraction"]
COMPACT = ["task", "length", "index", "mode", "rule", "budget_fraction", "budget", "accuracy", "context_tokens", "active_bytes",
           "active_allocated_bytes", "score_s", "compress_s"]


def summarize(rows: pd.DataFrame) -> pd.DataFrame:
    """Accuracy (n, 95% interval) and measured active bytes per (task, mode, rule, budget fraction)."""
    summary = interval_columns(rows, KEYS)
    means = rows.groupby(KEYS, sort=True).agg(
        budget_rows=("budget", "mean"),
        context_tokens=("context_tokens", "mean"),
        active_bytes=("active_bytes", "mean"),
        active_allocated_bytes=("active_allocated_bytes", "mean"),
    ).reset_index().round(4)
    return summary.merge(means, on=KEYS)


def compact(rows: pd.DataFrame) -> pd.DataFrame:
    """The per-sample rows the summary is computed from (no answer text)."""
    return rows[[c for c in COMPACT if c in rows.columns]].sort_values(["task", "mode", "rule", "budget_fraction", "index"])


def write_figure(summary: pd.DataFrame, path: Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = list(dict.fromkeys(zip(summary["task"], summary["mode"])))
    rules = sorted(set(summary["rule"]) - {"keep_all"})
    # 15+ rules: 20 colours and alternating markers keep every line its own.
    style = {rule: (plt.cm.tab20(i % 20), "osv^D"[i % 5]) for i, rule in enumerate(rules)}
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels) + 1.6, 3.8), sharey=True, squeeze=False)
    for ax, (task, mode) in zip(axes[0], panels):
        part = summary[(summary["task"] == task) & (summary["mode"] == mode)]
        full = part[part["rule"] == "keep_all"]["accuracy"]
        if len(full):
            ax.axhline(float(full.iloc[0]), color="black", linestyle="--", linewidth=1, label="full cache")
        for rule, line in part[part["rule"] != "keep_all"].groupby("rule"):
            color, marker = style[rule]
            ax.errorbar(line["budget_fraction"], line["accuracy"], yerr=[line["accuracy"] - line["ci_low"], line["ci_high"] - line["accuracy"]],
                        color=color, marker=marker, markersize=4, capsize=2, elinewidth=0.7, label=rule)
        ax.set_title(f"{task}, query-{mode}")
        ax.set_xlabel("context rows kept (fraction)")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("gold values recovered")
    axes[0][-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    if title:
        fig.suptitle(f"{title} (n={int(summary['n'].max())} per point; bars: 95% bootstrap intervals)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path
