"""Waiting conditions and their batches: what a resumed cell reports of its cache, and the needle rows it is checked on."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from idlekv.cache import TieredCache
from ruler.sample import Sample


@dataclass
class Pending:
    """A condition of one (B, K) cell waiting for its batch: its cache is built then."""

    cond: object  # the Condition
    b: int
    k: int
    rows: int  # active rows it will hold (B + K + the turn-1 tail)
    build: object  # () -> (TieredCache, timings)
    planned: object = None  # the PlannedCache it forks (masks, bytes held but not kept); None: a cache of its own


def cache_columns(cache: TieredCache, needles) -> dict:
    """What a row reports of a condition's cache, measured from its tensors."""
    size = cache.bytes()
    return {"active_rows": cache.rows, "active_bytes": size.active_kv, "warm_bytes": size.warm_kv, "digest_bytes": size.digest,
            "needle_rows_active": _span_coverage(cache, needles)}


def batches(pending: list, max_rows: int, headroom: int = 0) -> list[list]:
    """Group caches (smallest first) so that each batch's padded rows (+ the turn's room) x caches stay within max_rows."""
    batches, current = [], []
    for item in sorted(pending, key=lambda p: p.rows):
        if current and (item.rows + headroom) * (len(current) + 1) > max_rows:
            batches.append(current)
            current = []
        current.append(item)
    return batches + ([current] if current else [])


def turn_spans(sample: Sample, turn: int, part: str = "sentence") -> list[tuple[int, int]]:
    """The token spans [start, end) of the needles the turn asks about: whole needle sentences (the
    coverage column), or each needle's key through its value (`part="answer"`, what SpanRef-K costs)."""
    if part == "answer":
        return [(n.answer_token_start, n.answer_token_end) for n in sample.needles_for_turn(turn)]
    return [(n.token_start, n.token_end) for n in sample.needles_for_turn(turn)]


def needle_table(spans: list[tuple[int, int]], length: int, device) -> tuple[torch.Tensor, int]:
    """A lookup by position of the next-turn needle rows, and how many there are."""
    wanted = torch.cat([torch.arange(a, b) for a, b in spans]) if spans else torch.zeros(0, dtype=torch.long)
    table = torch.zeros(max(length, int(wanted.max()) + 1 if wanted.numel() else 0), dtype=torch.bool)
    table[wanted] = True
    return table.to(device), wanted.numel()


def _span_coverage(cache: TieredCache, needles: tuple[torch.Tensor, int]) -> float:
    """Fraction of the next-turn needle rows present in the active tier (over layers and heads)."""
    table, count = needles
    if not count:
        return 0.0
    hits = torch.stack([table[cache.active.positions(layer)[0]].sum(-1) for layer in range(cache.num_layers)])
    return float((hits.cpu().float() / count).mean())  # on the CPU: the same float on every device
