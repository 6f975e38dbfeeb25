"""From per-(layer, head) row scores to rankings, and from rankings to exactly K rows per head.

A ranking is computed per unit: one for the whole cache ("shared", as the reference), one
per layer, or one per KV head. Each (layer, head) then promotes the first K of ITS OWN warm
rows in its unit's order, so every head promotes exactly K rows even when per-head
compression left different rows in different heads' warm sets.
"""

from __future__ import annotations

import torch

GRANULARITIES = ("shared", "layer", "head")


def unit_scores(values: list[torch.Tensor], positions: list[torch.Tensor], length: int, granularity: str) -> torch.Tensor:
    """Mean score per position over the (layer, head) pairs of each unit that hold that row.

    Returns (units, length) with NaN at positions no pair of the unit holds; units are 1
    (shared), layers (layer) or layers*heads (head).
    """
    if granularity not in GRANULARITIES:
        raise ValueError(f"unknown granularity {granularity!r}; choose one of {GRANULARITIES}")
    layers, heads = len(values), values[0].shape[0]
    device = values[0].device
    units = {"shared": 1, "layer": layers, "head": layers * heads}[granularity]
    total = torch.zeros(units, length, device=device)
    count = torch.zeros(units, length, device=device)
    for layer, (v, p) in enumerate(zip(values, positions)):
        if granularity == "shared":
            unit = torch.zeros_like(p)
        elif granularity == "layer":
            unit = torch.full_like(p, layer)
        else:
            unit = torch.arange(heads, device=device)[:, None].expand_as(p) + layer * heads
        flat = unit * length + p.to(device)
        total.view(-1).index_add_(0, flat.reshape(-1), v.float().reshape(-1))
        count.view(-1).index_add_(0, flat.reshape(-1), torch.ones_like(v, dtype=torch.float32).reshape(-1))
    return torch.where(count > 0, total / count.clamp_min(1), torch.full_like(total, float("nan")))


def unit_of(layer: int, head: int, heads: int, granularity: str) -> int:
    return {"shared": 0, "layer": layer, "head": layer * heads + head}[granularity]


def rank_heads(orders: list[torch.Tensor], warm_positions: list[torch.Tensor], warm_slots: list[torch.Tensor],
               granularity: str, length: int, k: int | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer, each head's warm slots in its unit's order (heads, rows), and how many of
    them the order ranks (heads,). With `k`, only the first k rows are ordered (a top-k is
    several times cheaper than a full sort); without, one ranking serves every K."""
    device = warm_positions[0].device
    ranks = torch.full((len(orders), length), float("inf"), device=device)
    for unit, order in enumerate(orders):
        ranks[unit, order.to(device)] = torch.arange(order.numel(), dtype=torch.float32, device=device)
    ranked = []
    for layer, (positions, slots) in enumerate(zip(warm_positions, warm_slots)):
        heads = positions.shape[0]
        units = torch.tensor([unit_of(layer, h, heads, granularity) for h in range(heads)], device=device)
        r = torch.gather(ranks[units], 1, positions.to(device))
        # ranks are distinct where finite, so a top-k lists the same rows as the sort's first k
        first = r.argsort(dim=-1, stable=True) if k is None else r.topk(min(k, r.shape[-1]), dim=-1, largest=False).indices
        ranked.append((torch.gather(slots, 1, first.to(slots.device)), torch.isfinite(r).sum(-1)))
    return ranked


def first_k(ranked: list[tuple[torch.Tensor, torch.Tensor]], k: int) -> list[torch.Tensor]:
    """Per layer, (1, heads, k) warm slots: each head's first k rows of `rank_heads`."""
    selection = []
    for layer, (slots, ranked_rows) in enumerate(ranked):
        if slots.shape[-1] < k:
            raise ValueError(f"cannot promote {k} rows: layer {layer} has only {slots.shape[-1]} warm rows per head")
        if bool((ranked_rows < k).any()):
            raise ValueError(f"the selector ranked fewer than {k} of layer {layer}'s warm rows in some head")
        selection.append(slots[None, :, :k])
    return selection


def take_first_k(orders: list[torch.Tensor], warm_positions: list[torch.Tensor], warm_slots: list[torch.Tensor],
                 k: int, granularity: str, length: int) -> list[torch.Tensor]:
    """Per layer, (1, heads, k) warm slots: each head's first k rows in its unit's order."""
    return first_k(rank_heads(orders, warm_positions, warm_slots, granularity, length, k), k)
