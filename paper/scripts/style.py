"""The paper's one figure style: fonts, sizes, and a colour fixed per condition in every figure."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# one colour per condition, the same in every figure (Okabe-Ito and greys: distinguishable in print)
CONDITION_COLOURS = {
    "Full": "#000000",
    "IdleKV": "#0072B2",
    "IdleKV+kept-anchors": "#56B4E9",
    "Matched": "#7F7F7F",
    "Random-K": "#E69F00",
    "Oldest-K": "#CC79A7",
    "SpanRef-K": "#009E73",
    "Refresh-buffered": "#D55E00",
    "Coverage": "#F0E442",
    "StaleQ-K": "#882255",
    "WrongQ-K": "#AA4499",
    "ProxyQ-K": "#44AA99",
    "ProxyC-K": "#117733",
    "IdleKV-digest": "#332288",
}
RC = {
    "font.family": "serif", "font.size": 8, "axes.titlesize": 8, "axes.labelsize": 8, "legend.fontsize": 7,
    "xtick.labelsize": 7, "ytick.labelsize": 7, "axes.grid": True, "grid.alpha": 0.3, "figure.dpi": 150,
    "pdf.fonttype": 42, "svg.hashsalt": "idlekv",
}


def colour(condition: str) -> str:
    return CONDITION_COLOURS.get(condition, "#444444")


def apply() -> None:
    plt.rcParams.update(RC)


def save(fig, stem) -> list:
    """The figure as vector PDF (for LaTeX) and PNG, with no timestamp, so the bytes are deterministic."""
    out = []
    for suffix, extra in ((".pdf", {"metadata": {"CreationDate": None, "ModDate": None, "Producer": None, "Creator": None}}),
                          (".png", {"metadata": {"Software": None}, "dpi": 200})):
        path = stem.with_suffix(suffix)
        fig.savefig(path, bbox_inches="tight", **extra)
        out.append(path)
    plt.close(fig)
    return out
