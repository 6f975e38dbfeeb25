"""95% intervals by bootstrap over samples; paired for differences between conditions of the same samples."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Interval:
    n: int
    mean: float
    low: float
    high: float


def bootstrap(values: Sequence[float], resamples: int = 2000, seed: int = 0, level: float = 0.95) -> Interval:
    """Mean of `values` (one per sample) and the percentile bootstrap interval of it."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return Interval(0, float("nan"), float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(resamples, x.size))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    return Interval(int(x.size), float(x.mean()), float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail)))


def wilson(successes: int, n: int, z: float = 1.96) -> Interval:
    """A proportion and its 95% Wilson score interval: not [0, 0] when every trial failed, as a bootstrap would be."""
    if n == 0:
        return Interval(0, float("nan"), float("nan"), float("nan"))
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return Interval(n, p, float(max(0.0, centre - half)), float(min(1.0, centre + half)))


def paired(a: Sequence[float], b: Sequence[float], resamples: int = 2000, seed: int = 0) -> Interval:
    """a - b over the same samples (aligned), resampling samples jointly."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired values must align sample by sample; got {a.shape} and {b.shape}")
    return bootstrap(a - b, resamples, seed)


def interval_columns(rows, keys: list[str], value: str = "accuracy"):
    """Per group of `keys` in a per-sample frame: n, the mean of `value` and its 95% bootstrap interval
    (samples where `value` is undefined, NaN, are not counted)."""
    import pandas as pd

    lines = []
    for cell, group in rows.groupby(keys, sort=True):
        i = bootstrap(group[value].dropna().to_numpy())
        cell = cell if isinstance(cell, tuple) else (cell,)
        lines.append({**dict(zip(keys, cell)), "n": i.n, value: round(i.mean, 4), "ci_low": round(i.low, 4),
                      "ci_high": round(i.high, 4)})
    return pd.DataFrame(lines)
