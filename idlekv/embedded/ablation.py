"""Does retrieval read the needle rows? Remove rows from every layer before a turn and re-answer.

- `queried`: the rows of the needles the turn asks for (their whole token spans);
- `random`: as many rows drawn at random from the haystack (rows of no real needle).
Removal happens after the earlier turns were answered from the full cache, as a turn-1
compression would.
"""

from __future__ import annotations

import random

import torch

from idlekv.cache import TieredCache
from ruler.sample import Sample


def needle_rows(sample: Sample, turn: int | None = None) -> list[int]:
    rows = []
    for n in sample.needles:
        if turn is None or turn in n.turns:
            rows += range(n.token_start, n.token_end)
    return rows


def remove_rows(cache: TieredCache, rows: list[int]) -> None:
    """Evict the given context positions from every layer and head (keep everything else).

    For an uncompressed cache, where every layer and head holds the same rows in order.
    """
    drop = set(rows)
    reference = cache.active.positions(0)[0, 0]
    if any(not bool((cache.active.positions(layer)[0] == reference).all()) for layer in range(cache.num_layers)):
        raise ValueError("remove_rows needs a cache whose layers and heads hold the same rows (an uncompressed one)")
    positions = reference.tolist()
    keep = torch.tensor([i for i, p in enumerate(positions) if p not in drop])
    cache.compress(keep)


def removal_hook(kind: str, turn: int, seed: int = 0):
    """A before_turn hook for answer_sample that removes rows before `turn`."""

    def hook(t: int, cache: TieredCache, sample: Sample) -> None:
        if t != turn or kind == "none":
            return
        queried = needle_rows(sample, turn)
        if kind == "queried":
            remove_rows(cache, queried)
        elif kind == "random":
            taken = set(needle_rows(sample))
            haystack = [p for p in range(sample.prompt_tokens) if p not in taken]
            remove_rows(cache, random.Random(seed * 1_000_003 + sample.index).sample(haystack, len(queried)))
        else:
            raise ValueError(f"unknown removal {kind!r}; choose none, queried or random")

    return hook
