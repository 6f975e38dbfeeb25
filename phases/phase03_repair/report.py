"""phase03's summary table and frontier figure, built from result rows."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

ORDER = ["Full", "Refresh-buffered", "SpanRef-K", "IdleKV", "IdleKV-warm", "Coverage", "Matched", "Random-K", "Oldest-K"]


def summarize(rows: pd.DataFrame) -> pd.DataFrame:
    """Mean accuracy, bytes and timings per (task, split, B, K, condition)."""
    keys = ["task", "split", "B", "K", "condition"]
    agg = rows.groupby(keys).agg(
        samples=("index", "count"), accuracy=("accuracy", "mean"), turn1_accuracy=("turn1_accuracy", "mean"),
        needle_rows_active=("needle_rows_active", "mean"), active_rows=("active_rows", "mean"),
        active_bytes=("active_bytes", "mean"), warm_bytes=("warm_bytes", "mean"), context_tokens=("context_tokens", "mean"),
        score_ms=("score_s", lambda s: 1e3 * s.mean()), select_ms=("select_s", lambda s: 1e3 * s.mean()),
        promote_ms=("promote_s", lambda s: 1e3 * s.mean()), resume_ms=("resume_s", lambda s: 1e3 * s.mean()),
        deployable=("deployable", "first"),
    ).reset_index()
    return agg.round(4)


def write_frontier(summary: pd.DataFrame, path: Path, title: str | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = list(summary.groupby(["split", "B"]))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels) + 1.4, 3.8), squeeze=False)
    for ax, ((split, b), part) in zip(axes[0], panels):
        names = [n for n in ORDER if n in set(part["condition"])] + sorted(set(part["condition"]) - set(ORDER))
        for name in names:
            line = part[part["condition"] == name].sort_values("K")
            if name == "Full":
                ax.axhline(line["accuracy"].mean(), color="black", linestyle="--", linewidth=1, label="Full (ceiling)")
                continue
            style = ":" if not bool(line["deployable"].iloc[0]) or name == "Refresh-buffered" else "-"
            ax.plot(line["K"], line["accuracy"], style, marker="o", markersize=3, label=name)
        ctx = int(part["context_tokens"].mean())
        ax.set_title(f"{part['task'].iloc[0]}\n{split} split, B={b}, ~{ctx} context tokens", fontsize=9)
        ax.set_xticks(sorted(part["K"].unique()))  # the measured K, not fractional ticks
        ax.set_xlabel("K (rows promoted; resumed budget B+K)")
        ax.set_ylabel("turn-2 gold values recovered")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))  # outside: the lines fill the panel
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path
