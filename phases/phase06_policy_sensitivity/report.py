"""phase06's tables (phase03's, per rule) and its figure: one panel per turn-1 rule, accuracy vs K
for Matched, IdleKV and Random-K with 95% intervals, Full as the ceiling."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from phases.phase03_repair.report import compact as phase03_compact
from phases.phase03_repair.report import paired_differences, summarize


def _per_rule(rows: pd.DataFrame, table) -> pd.DataFrame:
    parts = [table(group).assign(rule=rule) for rule, group in rows.groupby("rule", sort=False)]
    out = pd.concat(parts, ignore_index=True)
    return out[["rule", *[c for c in out.columns if c != "rule"]]]


def summarize_by_rule(rows: pd.DataFrame) -> pd.DataFrame:
    return _per_rule(rows, summarize)


def paired_by_rule(rows: pd.DataFrame) -> pd.DataFrame:
    return _per_rule(rows, paired_differences)


def compact(rows: pd.DataFrame) -> pd.DataFrame:
    return _per_rule(rows, phase03_compact)


def write_figure(summary: pd.DataFrame, path: Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rules = list(dict.fromkeys(summary["rule"]))
    columns = min(5, len(rules))
    rows = -(-len(rules) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 2.9 * rows + 0.6), sharey=True, squeeze=False)
    colours = {"Matched": "tab:grey", "IdleKV": "tab:blue", "Random-K": "tab:orange"}
    for ax, rule in zip(axes.flat, rules):
        part = summary[summary["rule"] == rule]
        full = part[part["condition"] == "Full"]["accuracy"]
        if len(full):
            ax.axhline(float(full.mean()), color="black", linestyle="--", linewidth=1, label="Full")
        for name, colour in colours.items():
            line = part[part["condition"] == name].sort_values("K")
            if len(line):
                ax.errorbar(line["K"], line["accuracy"], yerr=[line["accuracy"] - line["ci_low"], line["ci_high"] - line["accuracy"]],
                            color=colour, marker="o", markersize=3, capsize=2, elinewidth=0.8, label=name)
        ax.set_title(f"{rule} (B={int(part['B'].iloc[0])})", fontsize=9)
        ax.set_xticks(sorted(part["K"].unique()))
        ax.set_xlabel("K")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    spare = list(axes.flat)[len(rules):]
    for ax in spare:
        ax.axis("off")
    for ax in axes[:, 0]:
        ax.set_ylabel("turn-2 values recovered")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if spare:  # the legend in an empty panel, off the lines
        spare[0].legend(handles, labels, fontsize=8, loc="center")
    else:
        fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=len(labels))
    if title:
        fig.suptitle(f"{title} (n={int(summary['samples'].max())} per point; bars: 95% bootstrap intervals)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path
