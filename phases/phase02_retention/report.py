"""phase02's summary table and figure (accuracy vs budget, one line per rule)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def summarize(rows: pd.DataFrame) -> pd.DataFrame:
    """Mean accuracy and measured active bytes per (task, mode, rule, budget fraction)."""
    grouped = rows.groupby(["task", "mode", "rule", "budget_fraction"])
    return grouped.agg(
        samples=("index", "count"),
        accuracy=("accuracy", "mean"),
        budget_rows=("budget", "mean"),
        context_tokens=("context_tokens", "mean"),
        active_bytes=("active_bytes", "mean"),
        active_allocated_bytes=("active_allocated_bytes", "mean"),
    ).reset_index().round(4)


def write_figure(summary: pd.DataFrame, path: Path) -> Path:
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
            ax.plot(line["budget_fraction"], line["accuracy"], color=color, marker=marker, markersize=4, label=rule)
        ax.set_title(f"{task}, query-{mode}")
        ax.set_xlabel("context rows kept (fraction)")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("gold values recovered")
    axes[0][-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path
