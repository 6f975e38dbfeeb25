"""phase07's tables and figure: latency (n, p50, p95) and recall (n, mean, 95% bootstrap interval) per cell,
the ratios the issue asks for, and the envelope figure with the copy floors drawn on it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from idlekv.bench.synthetic_tiers import QWEN_7B, promote_bytes
from idlekv.intervals import bootstrap

CELL = ["part", "tier", "keys_model", "signal", "stage", "candidates", "k", "page_rows", "kept_fraction"]
COMPACT = [*CELL, "index", "value", "warm_key_bytes", "digest_bytes"]


def with_blank_fields(rows: pd.DataFrame) -> pd.DataFrame:
    """A field that does not apply is "" in a run's rows and empty (NaN) once read back from CSV: one form for both."""
    return rows.fillna({"signal": "", "keys_model": ""})


def summarize(rows: pd.DataFrame) -> pd.DataFrame:
    """Per cell: n, mean, p50, p95 and a 95% bootstrap interval of the mean."""
    out = []
    for key, part in with_blank_fields(rows).groupby(CELL):
        values = part["value"].to_numpy(dtype=float)
        interval = bootstrap(values)
        out.append({**dict(zip(CELL, key)), "n": len(values), "mean": values.mean(), "p50": float(np.median(values)),
                    "p95": float(np.percentile(values, 95)), "ci_low": interval.low, "ci_high": interval.high})
    return pd.DataFrame(out).round(6)


def memcpy_gbps(summary: pd.DataFrame) -> float:
    floor = summary[(summary["part"] == "floor") & (summary["stage"] == "memcpy")]
    return float(floor["p50"].iloc[0])


def ratios(rows: pd.DataFrame, summary: pd.DataFrame) -> pd.DataFrame:
    """What the issue compares, each from p50s of the same run: the floors of scoring and promotion, the digest
    against the exact signal, and the repair against re-prefilling the prompt."""
    out = []
    rows, summary = with_blank_fields(rows), with_blank_fields(summary)
    lat = summary[summary["part"] == "latency"]
    copy = memcpy_gbps(summary)
    key_bytes = rows.dropna(subset=["warm_key_bytes"]).groupby("candidates")["warm_key_bytes"].first() if "warm_key_bytes" in rows else {}
    for _, r in lat[lat["stage"] == "score"].iterrows():
        if r["signal"] == "exact" and r["candidates"] in key_bytes:
            floor = key_bytes[r["candidates"]] / (copy * 1e9)
            out.append(_ratio("exact score / reading every warm key at memcpy rate", r, r["p50"], floor))
        if r["signal"] != "exact":
            exact = lat[(lat["stage"] == "score") & (lat["signal"] == "exact") & (lat["candidates"] == r["candidates"])]
            if len(exact):
                out.append(_ratio(f"exact score / {r['signal']} score", r, exact["p50"].iloc[0], r["p50"]))
    for _, r in lat[lat["stage"] == "promote"].iterrows():
        floor = promote_bytes(QWEN_7B, int(r["k"])) / (copy * 1e9)
        out.append(_ratio("promote / moving its bytes at memcpy rate", r, r["p50"], floor))
    trade = lat[lat["stage"] == "score_tradeoff"]
    for _, r in trade[trade["signal"] == "digest"].iterrows():
        exact = trade[(trade["signal"] == "exact") & (trade["keys_model"] == r["keys_model"])]
        out.append(_ratio("exact score / digest score (same run)", r, exact["p50"].iloc[0], r["p50"]))
    pre = summary[(summary["part"] == "reprefill") & (summary["stage"] == "prefill")]
    for _, r in summary[(summary["part"] == "reprefill") & (summary["stage"] == "repair")].iterrows():
        out.append(_ratio("repair / re-prefill of the prompt", r, r["p50"], pre["p50"].iloc[0]))
    return pd.DataFrame(out).round(4)


def _ratio(what: str, r, numerator: float, denominator: float) -> dict:
    return {"ratio": what, **{k: r[k] for k in CELL if k not in ("part", "stage")}, "n": int(r["n"]),
            "numerator_s": numerator, "denominator_s": denominator, "value": numerator / denominator}


def compact(rows: pd.DataFrame) -> pd.DataFrame:
    return rows[[c for c in COMPACT if c in rows.columns]].sort_values(CELL + ["index"])


def write_figure(summary: pd.DataFrame, path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(17, 4.4))
    _envelope(axes[0], summary)
    _recall(axes[1], summary[summary["tier"] == "qwen7b"], "Qwen2.5-7B-shaped synthetic keys: recall of each head's exact top-K")
    _recall(axes[2], summary[summary["tier"] == "embedded"], "embedded model (real keys): recall per sample")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def _envelope(ax, summary: pd.DataFrame) -> None:
    lat = summary[(summary["part"] == "latency") & (summary["tier"] == "qwen7b")]
    copy = memcpy_gbps(summary)
    score = lat[lat["stage"] == "score"]
    for signal, line in score.groupby("signal"):
        line = line.sort_values("candidates")
        ax.errorbar(line["candidates"], line["p50"], yerr=[np.zeros(len(line)), line["p95"] - line["p50"]], marker="o", capsize=2,
                    label=f"score: {signal} (p50, bar to p95)")
    big_k = lat[lat["stage"] == "promote"]["k"].max()
    for stage in ("select", "promote"):
        line = lat[(lat["stage"] == stage) & (lat["k"] == big_k)].sort_values("candidates")
        if len(line):
            ax.plot(line["candidates"], line["p50"], marker="s", linestyle="--", label=f"{stage}, K={big_k}")
    n = np.array(sorted(score["candidates"].unique()), dtype=float)
    key_floor = n * QWEN_7B.layers * QWEN_7B.kv_heads * QWEN_7B.head_dim * 2 / (copy * 1e9)
    ax.plot(n, key_floor, color="grey", linestyle=":", label=f"floor: read every warm key at memcpy ({copy:.1f} GB/s)")
    ax.axhline(promote_bytes(QWEN_7B, int(big_k)) / (copy * 1e9), color="black", linestyle=":", linewidth=1,
               label=f"floor: move K={big_k} rows at memcpy")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("warm candidates per head (Qwen2.5-7B shape, 28 layers)")
    ax.set_ylabel("seconds")
    ax.set_title("repair stages vs warm candidates", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=6.5)


def _recall(ax, summary: pd.DataFrame, title: str) -> None:
    rec = summary[summary["part"] == "recall"]
    sizes = sorted(rec["page_rows"].unique())
    colours = dict(zip(sizes, ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown")))
    for (keys_model, stage, page_rows), line in rec.groupby(["keys_model", "stage", "page_rows"]):
        line = line.sort_values("kept_fraction")
        # colour: the page size; line: what is recalled (solid: each head's exact top-K); marker: the keys
        ax.errorbar(line["kept_fraction"], line["mean"], yerr=[line["mean"] - line["ci_low"], line["ci_high"] - line["mean"]],
                    color=colours[page_rows], linestyle="-" if stage == "top_k" else "--", marker="x" if keys_model == "iid" else "o",
                    markersize=3, capsize=2, label=f"{keys_model}, {stage}, P={page_rows}")
    if len(rec):
        ax.plot([rec["kept_fraction"].min(), rec["kept_fraction"].max()], [rec["kept_fraction"].min(), rec["kept_fraction"].max()],
                color="grey", linestyle=":", label="pages read at random")
        n = int(rec["n"].max())
        ax.set_title(f"{title}\n(n={n} per point; 95% bootstrap intervals)", fontsize=8)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("share of the warm pages read exactly")
    ax.set_ylabel("recall")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
