"""Every figure the paper uses, from saved_results/ only, in one style (paper/scripts/style.py).

    python paper/scripts/render_paper_figures.py [--saved saved_results] [--out paper/generated/figures]

Each figure is written as vector PDF (for LaTeX) and PNG, deterministically: the same CSVs give
the same bytes. FIGURES is the registry; main.tex includes figures by these names.
"""

from __future__ import annotations

import sys
from pathlib import Path

# this folder holds numbers.py, which must not shadow the standard `numbers`: search it last (for style.py)
_HERE = Path(__file__).resolve().parent
sys.path = [p for p in sys.path if Path(p or ".").resolve() != _HERE] + [str(_HERE)]

import argparse  # noqa: E402
from collections.abc import Callable  # noqa: E402

import pandas as pd  # noqa: E402
import style  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
FRONTIER = ["IdleKV+kept-anchors", "IdleKV", "SpanRef-K", "Refresh-buffered", "Matched", "Random-K", "Oldest-K"]
RULE_ORDER = ["snapkv", "snapkv_max", "snapkv_reference", "adakv", "pyramidkv", "arkv", "h2o", "streaming_llm", "scissorhands", "tova"]


def _errorbar(ax, x, line: pd.DataFrame, mean: str, label: str, colour: str, **kw) -> None:
    ax.errorbar(x, line[mean], yerr=[line[mean] - line["ci_low"], line["ci_high"] - line[mean]], color=colour, marker="o",
                markersize=2.5, capsize=1.5, elinewidth=0.7, linewidth=1, label=label, **kw)


def _frontier_panel(ax, part: pd.DataFrame, conditions: list[str]) -> None:
    full = part[part["condition"] == "Full"]
    if len(full):
        ax.axhline(full["accuracy"].mean(), color=style.colour("Full"), linestyle="--", linewidth=0.8, label="Full")
    for name in conditions:
        line = part[part["condition"] == name].sort_values("K")
        if len(line):
            _errorbar(ax, line["K"], line, "accuracy", name, style.colour(name), linestyle=":" if name == "SpanRef-K" else "-")
    ax.set_xticks(sorted(part["K"].unique()))
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("K (rows promoted)")


def frontier_4q(saved: Path):
    import matplotlib.pyplot as plt

    summary = pd.read_csv(saved / "phase03_repair_4q.csv")
    budgets = sorted(summary["B"].unique())
    fig, axes = plt.subplots(1, len(budgets), figsize=(6.6, 2.5), sharey=True, squeeze=False)
    for ax, b in zip(axes[0], budgets):
        _frontier_panel(ax, summary[summary["B"] == b], FRONTIER)
        ax.set_title(f"B = {b}")
    axes[0][0].set_ylabel("turn-2 values recovered")
    axes[0][-1].legend(loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
    return fig


def snapkv_max(saved: Path):
    import matplotlib.pyplot as plt

    summary = pd.read_csv(saved / "phase03_repair_4q_snapkv.csv")
    fig, axes = plt.subplots(1, 2, figsize=(6.6, 2.2), sharey=True)
    for ax, b in zip(axes, sorted(summary["B"].unique())):
        _frontier_panel(ax, summary[summary["B"] == b], ["IdleKV", "Matched", "Random-K", "Oldest-K"])
        ax.set_title(f"SnapKV-max as the turn-one rule, B = {b}")
    axes[0].set_ylabel("turn-2 values recovered")
    axes[-1].legend(loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
    return fig


def rank_profile(saved: Path):
    """The share of each row class in the band just past B (what Matched adds), per layer and head."""
    import matplotlib.pyplot as plt

    panels = (("phase03_repair_4q", 192, 24, "the reference's rule"), ("phase03_repair_4q_snapkv", 64, 24, "SnapKV-max"))
    fig, axes = plt.subplots(1, 2, figsize=(6.6, 2.0), sharey=True)
    classes = {"turn-2 needles": style.colour("IdleKV"), "other rows": style.colour("Matched")}
    for ax, (name, b, k, label) in zip(axes, panels):
        profile = pd.read_csv(saved / f"{name}_rank_profile.csv")
        band = profile[profile["band"] == f"{b}-{b + k}"]
        for i, (cls, colour) in enumerate(classes.items()):
            part = band[band["class"] == cls].sort_values(["layer", "head"])
            x = [j + (i - 0.5) * 0.35 for j in range(len(part))]
            ax.bar(x, part["share"], 0.35, yerr=[part["share"] - part["ci_low"], part["ci_high"] - part["share"]], color=colour,
                   capsize=1, error_kw={"elinewidth": 0.6}, label=cls)
            ax.set_xticks(range(len(part)), [f"L{a}H{h}" for a, h in zip(part["layer"], part["head"])], rotation=90)
        ax.set_title(f"{label}: ranks {b} to {b + k}")
    axes[0].set_ylabel("share of the class's rows")
    axes[-1].legend(frameon=False)
    return fig


def needle_counts(saved: Path):
    import matplotlib.pyplot as plt

    names = [f"phase03_repair_{n}q" for n in (2, 4, 6, 8)]
    fig, axes = plt.subplots(1, 4, figsize=(6.6, 2.1), sharey=True)
    for ax, name in zip(axes, names):
        summary = pd.read_csv(saved / f"{name}.csv")
        b = sorted(summary["B"].unique())[0]
        _frontier_panel(ax, summary[summary["B"] == b], ["IdleKV", "Matched", "Random-K"])
        ax.set_title(f"{name.rsplit('_', 1)[1].upper()}, B = {b}")
    axes[0].set_ylabel("turn-2 values recovered")
    axes[-1].legend(loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
    return fig


def specificity(saved: Path, name: str = "phase03_specificity_4q"):
    import matplotlib.pyplot as plt

    summary = pd.read_csv(saved / f"{name}.csv")
    part = summary[summary["K"] == summary["K"].max()].sort_values("accuracy")
    fig, ax = plt.subplots(figsize=(3.3, 2.9))
    y = range(len(part))
    ax.barh(list(y), part["accuracy"], xerr=[part["accuracy"] - part["ci_low"], part["ci_high"] - part["accuracy"]],
            color=[style.colour(c.replace("+kept-anchors", "")) for c in part["condition"]], capsize=1.5, error_kw={"elinewidth": 0.7})
    ax.set_yticks(list(y), part["condition"])
    ax.set_xlim(0, 1.02)
    ax.set_xlabel(f"turn-2 values recovered (B = {int(part['B'].iloc[0])}, K = {int(part['K'].iloc[0])})")
    return fig


def specificity_needles(saved: Path):
    return specificity(saved, "phase03_specificity_4q_needles")


def replication(saved: Path):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(3.3, 2.1))
    for name, marker, label in (("phase03_repair_4q", "o", "test seed 777"), ("phase03_repair_4q_seed2", "s", "test seed 1999")):
        pairs = pd.read_csv(saved / f"{name}_pairs.csv")
        line = pairs[(pairs["difference"] == "IdleKV - Matched") & (pairs["B"] == 192)].sort_values("K")
        ax.errorbar(line["K"], line["mean"], yerr=[line["mean"] - line["ci_low"], line["ci_high"] - line["mean"]],
                    color=style.colour("IdleKV"), marker=marker, markersize=3, capsize=1.5, elinewidth=0.7, linewidth=1,
                    linestyle="-" if marker == "o" else "--", label=label)
    ax.axhline(0, color="black", linewidth=0.6)
    ax.set_xlabel("K (B = 192)")
    ax.set_ylabel("IdleKV - Matched")
    ax.legend(frameon=False)
    return fig


def signal_profile(saved: Path):
    import matplotlib.pyplot as plt

    profile = pd.read_csv(saved / "phase03_specificity_4q_signal_profile.csv")
    part = profile[profile["layer"].astype(str) != "all"]
    signals = ["exact", "proxy", "proxy_centered", "stale"]
    colours = {"exact": style.colour("IdleKV"), "proxy": style.colour("ProxyQ-K"), "proxy_centered": style.colour("ProxyC-K"),
               "stale": style.colour("StaleQ-K")}
    layers = sorted(part["layer"].astype(int).unique())
    fig, ax = plt.subplots(figsize=(3.3, 2.1))
    width = 0.8 / len(signals)
    for i, signal in enumerate(signals):
        line = part[part["signal"] == signal].assign(layer=lambda f: f["layer"].astype(int)).sort_values("layer")
        x = [layer + (i - (len(signals) - 1) / 2) * width for layer in line["layer"]]
        ax.bar(x, line["value_recall"], width, yerr=[line["value_recall"] - line["ci_low"], line["ci_high"] - line["value_recall"]],
               color=colours[signal], capsize=1, error_kw={"elinewidth": 0.6}, label=signal)
    ax.set_xticks(layers)
    ax.set_xlabel("layer")
    ax.set_ylabel("asked values' rows in the top K")
    ax.legend(frameon=False)
    return fig


def regime(saved: Path):
    import matplotlib.pyplot as plt

    pairs = pd.read_csv(saved / "phase03_regime_4q_pairs.csv")
    summary = pd.read_csv(saved / "phase03_regime_4q.csv")
    gain = pairs[pairs["difference"] == "IdleKV - Matched"]
    budgets, ks = sorted(gain["B"].unique()), sorted(gain["K"].unique())
    grid = gain.set_index(["B", "K"])
    fig, ax = plt.subplots(figsize=(4.4, 2.6))
    ax.grid(False)
    image = ax.imshow([[grid.loc[(b, k), "mean"] for k in ks] for b in budgets], cmap="RdBu", vmin=-1, vmax=1, origin="lower", aspect="auto")
    for i, b in enumerate(budgets):
        for j, k in enumerate(ks):
            c = grid.loc[(b, k)]
            ax.text(j, i, f"{c['mean']:+.2f}\n[{c['ci_low']:+.2f}, {c['ci_high']:+.2f}]", ha="center", va="center", fontsize=5)
    context = summary["context_tokens"].mean()
    ax.set_xticks(range(len(ks)), [str(k) for k in ks])
    ax.set_yticks(range(len(budgets)), [f"{b} ({b / context:.0%})" for b in budgets])
    ax.set_xlabel("K")
    ax.set_ylabel("B (share of the context)")
    fig.colorbar(image, ax=ax, fraction=0.05, label="IdleKV - Matched")
    return fig


def multiturn(saved: Path):
    import matplotlib.pyplot as plt

    summary = pd.read_csv(saved / "phase04_multiturn.csv")
    part = summary[(summary["variant"] == "cumulative") & summary["turn"].astype(str).str.isdigit()]
    fig, ax = plt.subplots(figsize=(3.3, 2.3))
    for name, line in part.groupby("condition", sort=False):
        if " - " in name:
            continue
        line = line.assign(turn=line["turn"].astype(int)).sort_values("turn")
        _errorbar(ax, line["turn"], line, "accuracy", name, style.colour(name))
    ax.set_xticks(sorted(part["turn"].astype(int).unique()))
    ax.set_xlabel("turn")
    ax.set_ylabel("values recovered")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
    return fig


def policy(saved: Path):
    import matplotlib.pyplot as plt

    pairs = pd.read_csv(saved / "phase06_policy_sensitivity_pairs.csv")
    part = pairs[(pairs["difference"] == "IdleKV - Matched") & (pairs["K"] == pairs["K"].max())]
    part = part.set_index("rule").loc[[r for r in RULE_ORDER if r in set(part["rule"])]].reset_index()
    fig, ax = plt.subplots(figsize=(3.3, 2.3))
    x = range(len(part))
    ax.bar(list(x), part["mean"], yerr=[part["mean"] - part["ci_low"], part["ci_high"] - part["mean"]], color=style.colour("IdleKV"),
           capsize=1.5, error_kw={"elinewidth": 0.7})
    ax.axhline(0, color="black", linewidth=0.6)
    ax.set_xticks(list(x), part["rule"], rotation=40, ha="right")
    ax.set_ylabel(f"IdleKV - Matched (K = {int(part['K'].iloc[0])})")
    return fig


def retention(saved: Path):
    import matplotlib.pyplot as plt

    summary = pd.read_csv(saved / "phase02_retention.csv")
    part = summary[(summary["task"] == "mq_niah_4q") & (summary["mode"] == "aware")]
    rules = [r for r in RULE_ORDER if r in set(part["rule"])]
    palette = dict(zip(RULE_ORDER, ["#0072B2", "#56B4E9", "#7F7F7F", "#009E73", "#E69F00", "#D55E00", "#CC79A7", "#000000", "#882255", "#F0E442"]))
    fig, ax = plt.subplots(figsize=(3.3, 2.3))
    full = part[part["rule"] == "keep_all"]["accuracy"]
    if len(full):
        ax.axhline(float(full.iloc[0]), color="black", linestyle="--", linewidth=0.8, label="full cache")
    for rule in rules:
        line = part[part["rule"] == rule].sort_values("budget_fraction")
        _errorbar(ax, line["budget_fraction"], line, "accuracy", rule, palette[rule])
    ax.set_xlabel("context rows kept (fraction)")
    ax.set_ylabel("values recovered")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
    return fig


def full_cache(saved: Path):
    import matplotlib.pyplot as plt

    summary = pd.read_csv(saved / "phase01_full_cache.csv")
    part = summary[summary["task"] == "mq_niah"]
    fig, ax = plt.subplots(figsize=(3.3, 2.1))
    colours = ["#0072B2", "#E69F00", "#009E73", "#CC79A7"]
    for colour, (keys, line) in zip(colours, part.groupby("num_keys")):
        _errorbar(ax, line["length"], line.sort_values("length"), "accuracy", f"{keys} needles", colour)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("values recovered")
    ax.set_ylim(0.5, 1.02)
    ax.legend(frameon=False)
    return fig


def runtime(saved: Path):
    import matplotlib.pyplot as plt

    summary = pd.read_csv(saved / "phase07_runtime.csv").fillna({"signal": "", "keys_model": ""})
    fig, (left, right) = plt.subplots(1, 2, figsize=(6.6, 2.4))
    lat = summary[(summary["part"] == "latency") & (summary["tier"] == "qwen7b")]
    names = {"exact": ("IdleKV", "exact score"), "digest": ("IdleKV-digest", "digest score (P = 16, 1/64 read)"),
             "proxy": ("ProxyQ-K", "proxy score")}
    for signal, (condition, label) in names.items():
        line = lat[(lat["stage"] == "score") & (lat["signal"] == signal)].sort_values("candidates")
        left.plot(line["candidates"], line["p50"], marker="o", markersize=2.5, linewidth=1, color=style.colour(condition), label=label)
    k = int(lat[lat["stage"] == "promote"]["k"].max())
    for stage, colour in (("select", "#E69F00"), ("promote", "#CC79A7")):
        line = lat[(lat["stage"] == stage) & (lat["k"] == k)].sort_values("candidates")
        left.plot(line["candidates"], line["p50"], marker="s", markersize=2.5, linewidth=1, linestyle="--", color=colour,
                  label=f"{stage} (K = {k})")
    left.set_xscale("log", base=2)
    left.set_yscale("log")
    left.set_xlabel("warm candidates per head")
    left.set_ylabel("seconds (p50)")
    left.legend(frameon=False, fontsize=6)
    rec = summary[(summary["part"] == "recall") & (summary["page_rows"] == 16)]
    lines = (("qwen7b", "rope", "top_k", "synthetic keys: each head's top-5000", "#7F7F7F"),
             ("qwen7b", "rope", "planted", "synthetic keys: the planted rows", "#0072B2"),
             ("embedded", "real", "needles", "embedded model: the needle rows", "#D55E00"))
    for tier, keys, stage, label, colour in lines:
        line = rec[(rec["tier"] == tier) & (rec["keys_model"] == keys) & (rec["stage"] == stage)].sort_values("kept_fraction")
        _errorbar(right, line["kept_fraction"], line, "mean", label, colour)
    right.set_xscale("log", base=2)
    right.set_xlabel("share of warm pages read (P = 16)")
    right.set_ylabel("recall")
    right.set_ylim(-0.02, 1.02)
    right.legend(frameon=False, fontsize=6)
    return fig


FIGURES: dict[str, Callable] = {
    "fig_frontier_4q": frontier_4q, "fig_needle_counts": needle_counts, "fig_snapkv_max": snapkv_max, "fig_rank_profile": rank_profile, "fig_specificity": specificity, "fig_specificity_needles": specificity_needles, "fig_replication": replication,
    "fig_signal_profile": signal_profile, "fig_regime": regime,
    "fig_multiturn": multiturn, "fig_policy": policy, "fig_retention": retention, "fig_full_cache": full_cache,
    "fig_runtime": runtime,
}


def render(saved: Path, out: Path) -> list[Path]:
    style.apply()
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, draw in FIGURES.items():
        written += style.save(draw(saved), out / name)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--saved", default=str(ROOT / "saved_results"))
    parser.add_argument("--out", default=str(ROOT / "paper" / "generated" / "figures"))
    args = parser.parse_args(argv)
    for path in render(Path(args.saved), Path(args.out)):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
