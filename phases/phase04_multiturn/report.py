"""phase04's summary and figure: per-turn accuracy, the mean over turns 2-5, paired differences, with n and 95% intervals."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from idlekv.intervals import bootstrap, paired  # noqa: E402

BASELINE = "Matched"
# the per-sample rows published beside the summary: every column it reads, and the rows each turn held
COMPACT = ["variant", "condition", "turn", "index", "accuracy", "needle_rows_active", "warm_rows", "active_rows", "evicted_again",
           "turn_rows", "score_s", "select_s", "promote_s"]


def compact(rows: pd.DataFrame) -> pd.DataFrame:
    return rows[[c for c in COMPACT if c in rows.columns]].sort_values(["variant", "condition", "index", "turn"])


def _later_turns(rows: pd.DataFrame) -> pd.Series:
    """Per (variant, condition, index): the mean accuracy over the turns after the first."""
    later = rows[rows["turn"] > 1]
    return later.groupby(["variant", "condition", "index"])["accuracy"].mean()


def _line(variant, condition, turn, interval, **extra) -> dict:
    return {"variant": variant, "condition": condition, "turn": turn, "n": interval.n, "accuracy": round(interval.mean, 4),
            "ci_low": round(interval.low, 4), "ci_high": round(interval.high, 4), **extra}


def summarize(rows: pd.DataFrame) -> pd.DataFrame:
    lines = []
    for (variant, condition, turn), group in rows.groupby(["variant", "condition", "turn"], sort=True):
        lines.append(_line(variant, condition, str(turn), bootstrap(group.sort_values("index")["accuracy"]),
                           warm_rows=round(group["warm_rows"].mean(), 1), active_rows=round(group["active_rows"].mean(), 1),
                           evicted_again=round(group["evicted_again"].mean(), 4)))
    later = _later_turns(rows)
    last = str(int(rows["turn"].max()))
    for (variant, condition), values in later.groupby(level=["variant", "condition"]):
        lines.append(_line(variant, condition, f"2-{last}", bootstrap(values.to_numpy())))
    for variant, per_condition in later.groupby(level="variant"):
        table = per_condition.unstack("condition")
        for condition in (c for c in table.columns if c != BASELINE and BASELINE in table.columns):
            lines.append(_line(variant, f"{condition} - {BASELINE}", f"2-{last}", paired(table[condition], table[BASELINE])))
    if {"cumulative", "non_cumulative"} <= set(rows["variant"]):
        table = later.unstack("variant").dropna()
        for condition in sorted(set(table.index.get_level_values("condition"))):
            pair = table.xs(condition, level="condition")
            lines.append(_line("cumulative - non_cumulative", condition, f"2-{last}",
                               paired(pair["cumulative"], pair["non_cumulative"])))
    return pd.DataFrame(lines)


def write_figure(summary: pd.DataFrame, path: Path, title: str | None = None) -> Path:
    per_turn = summary[summary["turn"].str.isdigit() & ~summary["condition"].str.contains(" - ")]
    variants = [v for v in ("cumulative", "non_cumulative") if v in set(per_turn["variant"])]
    fig, axes = plt.subplots(1, len(variants), figsize=(5.2 * len(variants), 3.8), sharey=True, squeeze=False)
    for ax, variant in zip(axes[0], variants):
        part = per_turn[per_turn["variant"] == variant]
        for condition, line in part.groupby("condition", sort=False):
            turns = line["turn"].astype(int)
            ax.errorbar(turns, line["accuracy"], yerr=[line["accuracy"] - line["ci_low"], line["ci_high"] - line["accuracy"]],
                        marker="o", capsize=3, label=condition)
        ax.set_title(f"{variant.replace('_', '-')} eviction")
        ax.set_xlabel("turn")
        ax.set_xticks(sorted(part["turn"].astype(int).unique()))
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("fraction of the turn's values recovered")
    axes[0][0].set_ylim(-0.02, 1.02)
    axes[0][-1].legend(loc="lower left", fontsize=8)
    if title:
        fig.suptitle(title + f" (n={int(per_turn['n'].max())}, 95% bootstrap intervals)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path
