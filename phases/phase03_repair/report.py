"""phase03's summary table (n, mean and a 95% bootstrap interval per cell), paired differences, the
compact per-sample rows every number re-derives from, and the frontier figure with its intervals.

    python -m phases.publish --rederive saved_results/phase03_repair_4q_rows.csv.gz   # re-derive, compare
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from idlekv.intervals import bootstrap, paired

ORDER = ["Full", "Refresh-buffered", "SpanRef-K", "IdleKV+kept-anchors", "IdleKV", "IdleKV-digest", "Coverage", "ProxyQ-K", "ProxyC-K", "StaleQ-K",
         "WrongQ-K", "Matched", "Random-K", "Oldest-K"]
KEYS = ["task", "split", "B", "K", "condition"]
# what the compact per-sample rows keep: every column a summary or a paired difference reads
COMPACT = ["task", "split", "index", "B", "K", "condition", "deployable", "accuracy", "turn1_accuracy", "needle_rows_active",
           "active_rows", "active_bytes", "warm_bytes", "context_tokens", "score_s", "select_s", "promote_s", "resume_s"]
BASELINES = ("Matched", "WrongQ-K", "StaleQ-K")  # what a repair's gain is measured against, paired by sample


def summarize(rows: pd.DataFrame) -> pd.DataFrame:
    """Mean accuracy (n and a 95% bootstrap interval over samples), bytes and timings per (task, split, B, K, condition)."""
    keys = KEYS
    agg = rows.groupby(keys).agg(
        samples=("index", "count"), accuracy=("accuracy", "mean"), turn1_accuracy=("turn1_accuracy", "mean"),
        needle_rows_active=("needle_rows_active", "mean"), active_rows=("active_rows", "mean"),
        active_bytes=("active_bytes", "mean"), warm_bytes=("warm_bytes", "mean"), context_tokens=("context_tokens", "mean"),
        score_ms=("score_s", lambda s: 1e3 * s.mean()), select_ms=("select_s", lambda s: 1e3 * s.mean()),
        promote_ms=("promote_s", lambda s: 1e3 * s.mean()), resume_ms=("resume_s", lambda s: 1e3 * s.mean()),
        deployable=("deployable", "first"),
    ).reset_index()
    intervals = rows.groupby(keys)["accuracy"].apply(lambda a: bootstrap(a.to_numpy()))
    agg["ci_low"] = [intervals[tuple(r)].low for r in agg[keys].itertuples(index=False)]
    agg["ci_high"] = [intervals[tuple(r)].high for r in agg[keys].itertuples(index=False)]
    return agg.round(4)


def paired_differences(rows: pd.DataFrame, baselines=BASELINES) -> pd.DataFrame:
    """Per (task, split, B, K): every condition minus each baseline present, paired by sample, with n and a 95% interval."""
    out = []
    for cell, part in rows.groupby(KEYS[:-1]):
        table = part.pivot_table(index="index", columns="condition", values="accuracy")
        for baseline in (b for b in baselines if b in table.columns):
            for condition in (c for c in table.columns if c != baseline):
                both = table[[condition, baseline]].dropna()
                d = paired(both[condition].to_numpy(), both[baseline].to_numpy())
                out.append({**dict(zip(KEYS[:-1], cell)), "difference": f"{condition} - {baseline}", "n": d.n,
                            "mean": round(d.mean, 4), "ci_low": round(d.low, 4), "ci_high": round(d.high, 4)})
    return pd.DataFrame(out)


def compact(rows: pd.DataFrame) -> pd.DataFrame:
    """The per-sample rows a published summary keeps beside it (no answer text)."""
    return rows[[c for c in COMPACT if c in rows.columns]].sort_values(["split", "index", "B", "K", "condition"])


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
            errors = None if "ci_low" not in line else [line["accuracy"] - line["ci_low"], line["ci_high"] - line["accuracy"]]
            ax.errorbar(line["K"], line["accuracy"], yerr=errors, fmt=style, marker="o", markersize=3, capsize=2, elinewidth=0.8,
                        label=name)
        ctx = int(part["context_tokens"].mean())
        ax.set_title(f"{part['task'].iloc[0]}\n{split} split, B={b}, ~{ctx} context tokens", fontsize=9)
        ax.set_xticks(sorted(part["K"].unique()))  # the measured K, not fractional ticks
        ax.set_xlabel("K (rows promoted; resumed budget B+K)")
        ax.set_ylabel("turn-2 gold values recovered")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))  # outside: the lines fill the panel
    if title:
        n = int(summary["samples"].max())
        fig.suptitle(f"{title} (n={n} per cell; bars: 95% bootstrap intervals)" if "ci_low" in summary else title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def write_regime(summary: pd.DataFrame, pairs: pd.DataFrame, path: Path, title: str | None = None,
                 condition: str = "IdleKV", baseline: str = "Matched") -> Path:
    """Heatmaps over B (as a share of the context) x K: the condition's accuracy, the baseline's, and
    their paired gain with its 95% interval written in each cell."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    context = summary["context_tokens"].mean()
    budgets, ks = sorted(summary["B"].unique()), sorted(summary["K"].unique())
    gain = pairs[pairs["difference"] == f"{condition} - {baseline}"].set_index(["B", "K"])
    acc = summary.set_index(["condition", "B", "K"])
    panels = [(condition, lambda b, k: acc.loc[(condition, b, k)], "viridis", (0, 1)),
              (baseline, lambda b, k: acc.loc[(baseline, b, k)], "viridis", (0, 1)),
              (f"{condition} - {baseline} (paired)", lambda b, k: gain.loc[(b, k)].rename({"mean": "accuracy"}), "RdBu", (-1, 1))]
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.9))
    for ax, (name, cell, cmap, (low, high)) in zip(axes, panels):
        grid = [[cell(b, k) for k in ks] for b in budgets]
        image = ax.imshow([[c["accuracy"] for c in row] for row in grid], cmap=cmap, vmin=low, vmax=high, aspect="auto",
                          origin="lower")
        for i, row in enumerate(grid):
            for j, c in enumerate(row):
                ax.text(j, i, f"{c['accuracy']:.2f}\n[{c['ci_low']:.2f}, {c['ci_high']:.2f}]", ha="center", va="center",
                        fontsize=6.5, color="white" if cmap == "viridis" and c["accuracy"] < 0.55 else "black")
        ax.set_xticks(range(len(ks)), [str(k) for k in ks])
        ax.set_yticks(range(len(budgets)), [f"{b} ({b / context:.0%})" for b in budgets])
        ax.set_xlabel("K (rows promoted)")
        ax.set_ylabel("B (share of the context)")
        ax.set_title(name, fontsize=9)
        fig.colorbar(image, ax=ax, fraction=0.046)
    if title:
        n = int(summary["samples"].max())
        fig.suptitle(f"{title} (n={n} per cell; 95% bootstrap intervals)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path
