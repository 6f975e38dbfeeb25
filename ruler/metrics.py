"""RULER's string-match metrics and per-needle recall.

Predictions are cleaned as RULER does (control characters become newlines, then strip);
matching is a case-insensitive substring test. Scores are fractions in [0, 1] (RULER
reports the same numbers x 100).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_CONTROL = re.compile(r"[\x00-\x1f]")


def clean_prediction(prediction: str) -> str:
    return _CONTROL.sub("\n", prediction or "").strip()


def needle_recall(prediction: str, references: Sequence[str]) -> list[bool]:
    """For each gold value: was it found in the prediction?"""
    pred = clean_prediction(prediction).lower()
    return [bool(ref) and ref.lower() in pred for ref in references]


def string_match_all(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Mean over samples of the fraction of gold values found."""
    _check(predictions, references)
    scores = [sum(needle_recall(p, refs)) / len(refs) if refs else 0.0 for p, refs in zip(predictions, references)]
    return sum(scores) / len(scores) if scores else 0.0


def string_match_part(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Mean over samples of 1 if any gold value is found."""
    _check(predictions, references)
    scores = [float(any(needle_recall(p, refs))) for p, refs in zip(predictions, references)]
    return sum(scores) / len(scores) if scores else 0.0


def _check(predictions, references) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} reference lists")
    if any(isinstance(r, str) for r in references):
        raise TypeError("references must be lists of gold strings, one list per prediction")
