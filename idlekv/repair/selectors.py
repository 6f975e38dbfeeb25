"""Selectors: turn a unit's per-position scores into an order over its candidate rows.

Each selector returns, per unit, every candidate position in priority order; the first K
of each head's own warm rows are promoted (granularity.take_first_k), so each selector
yields exactly K rows per head or raises.

- topk: plain top-K (with the turn-1 rule's scores, the Matched control);
- topk_burst (IdleKV): anchors by score, each expanded to the burst [a-2, a+20];
- coverage: greedy non-overlapping windows by summed score;
- random, oldest: content-agnostic controls;
- span_ref: the annotated next-turn needle spans (benchmark metadata: NOT deployable).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


def _fill(order: torch.Tensor, candidates: torch.Tensor, rest_key: torch.Tensor) -> torch.Tensor:
    """`order` first (deduplicated, candidates only), then the remaining candidates by rest_key ascending."""
    length = candidates.shape[0]
    order = order[(order >= 0) & (order < length)]
    order = order[candidates[order]]
    seen = torch.zeros(length, dtype=torch.bool, device=order.device)
    first = torch.ones_like(order, dtype=torch.bool)
    if order.numel():
        # keep the first occurrence of each position
        idx = torch.arange(order.numel(), device=order.device)
        first_index = torch.full((length,), order.numel(), device=order.device, dtype=torch.long).scatter_reduce(0, order, idx, "amin")
        first = first_index[order] == idx
        order = order[first]
        seen[order] = True
    rest = torch.nonzero(candidates & ~seen).flatten()
    rest = rest[rest_key[rest].argsort(stable=True)]
    return torch.cat([order, rest])


@dataclass
class TopKBurst:
    """IdleKV: rank rows by score; each anchor brings its neighbourhood [a + lo, a + hi]."""

    lo: int = -2
    hi: int = 20
    name = "topk_burst"
    needs_scores = True
    k_free = False

    def order(self, scores: torch.Tensor, candidates: torch.Tensor, k: int, anchor_scores: torch.Tensor | None = None, **_) -> torch.Tensor:
        """`anchor_scores`, when given, rank the anchors over every row (active ones too); the
        bursts still bring only candidates, so a kept row can anchor the evicted rows around it."""
        s = torch.where(candidates, scores.nan_to_num(float("-inf")), torch.full_like(scores, float("-inf")))
        ranked = s if anchor_scores is None else anchor_scores.nan_to_num(float("-inf"))
        # A candidate anchor brings at least itself, so K of them fill K rows; anchors that
        # are not candidates may bring nothing, so up to that many more can come first.
        limit = max(k, 1) + (0 if anchor_scores is None else int((~candidates).sum()))
        anchors = ranked.argsort(descending=True, stable=True)[:limit]
        offsets = torch.arange(self.lo, self.hi + 1, device=scores.device)
        bursts = (anchors[:, None] + offsets[None, :]).reshape(-1)
        return _fill(bursts, candidates, -s)


@dataclass
class TopK:
    """Plain top-K by score, ties by position (with the turn-1 rule's scores: the Matched control)."""

    name = "topk"
    needs_scores = True
    k_free = True  # the order does not depend on K (or the seed): one serves every K

    def order(self, scores: torch.Tensor, candidates: torch.Tensor, k: int, **_) -> torch.Tensor:
        s = torch.where(candidates, scores.nan_to_num(float("-inf")), torch.full_like(scores, float("-inf")))
        return _fill(torch.empty(0, dtype=torch.long, device=scores.device), candidates, -s)


@dataclass
class Coverage:
    """Greedy non-overlapping windows of `width` rows with the largest summed score."""

    width: int = 23
    name = "coverage"
    needs_scores = True
    k_free = False

    def order(self, scores: torch.Tensor, candidates: torch.Tensor, k: int, **_) -> torch.Tensor:
        s = torch.where(candidates, scores.nan_to_num(0.0).clamp_min(0), torch.zeros_like(scores)).float()
        length, picked, covered = s.shape[0], [], 0
        free = candidates.clone()
        kernel = torch.ones(1, 1, self.width, device=s.device)
        while covered < k and bool(free.any()):
            sums = torch.nn.functional.conv1d((s * free)[None, None], kernel)[0, 0]  # window starting at i
            start = int(sums.argmax())
            window = torch.arange(start, min(start + self.width, length), device=s.device)
            window = window[free[window]]
            if window.numel() == 0:
                break
            picked.append(window)
            covered += window.numel()
            free[start : start + self.width] = False
        order = torch.cat(picked) if picked else torch.empty(0, dtype=torch.long, device=s.device)
        return _fill(order, candidates, -s)


@dataclass
class RandomK:
    name = "random"
    needs_scores = False
    k_free = False

    def order(self, scores: torch.Tensor, candidates: torch.Tensor, k: int, seed: int = 0, **_) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        key = torch.rand(candidates.shape[0], generator=gen).to(candidates.device)
        return _fill(torch.empty(0, dtype=torch.long, device=candidates.device), candidates, key)


@dataclass
class OldestK:
    name = "oldest"
    needs_scores = False
    k_free = True

    def order(self, scores: torch.Tensor, candidates: torch.Tensor, k: int, **_) -> torch.Tensor:
        key = torch.arange(candidates.shape[0], dtype=torch.float32, device=candidates.device)
        return _fill(torch.empty(0, dtype=torch.long, device=candidates.device), candidates, key)


@dataclass
class SpanRefK:
    """A label-assisted reference, not deployable: as many whole annotated spans as fit in K
    (shortest first), then the rows nearest to any span. `part`: the spans it costs, each needle's
    key through its value ("answer", the default) or whole needle sentences ("sentence")."""

    part: str = "answer"
    name = "span_ref"
    needs_scores = False
    k_free = False

    def order(self, scores: torch.Tensor, candidates: torch.Tensor, k: int, spans: Sequence[tuple[int, int]] = (),
              answer_spans: Sequence[tuple[int, int]] = (), **_) -> torch.Tensor:
        spans = answer_spans if self.part == "answer" else spans
        device = candidates.device
        length = candidates.shape[0]
        chosen, budget = [], k
        for a, b in sorted(spans, key=lambda ab: ab[1] - ab[0]):
            rows = torch.arange(a, b, device=device)
            rows = rows[candidates[rows]]
            if rows.numel() <= budget:
                chosen.append(rows)
                budget -= rows.numel()
        order = torch.cat(chosen) if chosen else torch.empty(0, dtype=torch.long, device=device)
        distance = torch.full((length,), float(length), device=device)
        for a, b in spans:
            pos = torch.arange(length, device=device)
            distance = torch.minimum(distance, torch.clamp(torch.maximum(a - pos, pos - (b - 1)), min=0).float())
        return _fill(order, candidates, distance)


SELECTORS = {cls.name: cls for cls in (TopK, TopKBurst, Coverage, RandomK, OldestK, SpanRefK)}


def build_selector(name: str, **options):
    try:
        return SELECTORS[name](**options)
    except KeyError:
        raise ValueError(f"unknown selector {name!r}; choose one of {sorted(SELECTORS)}") from None
