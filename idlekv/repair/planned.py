"""A retention plan applied at the pause: the compressed cache every condition of one B forks.

A plain plan keeps the same number of context rows in every (layer, KV head). A ragged plan
(PyramidKV per layer, AdaKV per head) holds every head padded to the widest budget: the padding
rows (the next-ranked, real rows) are masked from attention at the signal's forward and at the
resume (idlekv/cache/row_mask.py), and take no share of a signal's softmax. Where a layer's heads pad by the same count (PyramidKV),
the padding rows are also warm candidates, so a repair may restore them; per-head padding
(AdaKV) is held but cannot be promoted, because the warm tier holds one count per layer. A
tri-state plan (ARKV) keeps its middle tier as the round trip through its storage precision,
the values a mixed-precision store gives attention; promoted rows enter at full precision.
The bytes the tensors hold beyond what the plan stores (padding, the quantized rows' savings)
are reported, so a row's active bytes are the plan's.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch

from idlekv.cache import TieredCache
from idlekv.cache.row_mask import row_masks
from idlekv.cache.selection import gather_rows
from idlekv.retention.base import RetentionPlan


@dataclass
class PlannedCache:
    cache: TieredCache
    visible: list[torch.Tensor] | None  # per layer (kv_heads, rows) bool, False = padding; None = every row visible
    held_not_kept: int  # bytes the tensors hold that the plan's storage would not

    def masks(self, model):
        """The attention context under which this cache (and its forks) must be read."""
        return nullcontext() if self.visible is None else row_masks(model, self.visible)


def apply_plan(root: TieredCache, plan: RetentionPlan, n_ctx: int, reserve: int) -> PlannedCache:
    """A fork of `root` compressed to `plan` (the rows after the context kept outside it), evicted rows warm."""
    heads = plan.keep.shape[1]
    tail = torch.arange(n_ctx, root.rows).expand(heads, -1)
    cache = root.fork()
    cache.compress([torch.cat([plan.keep[layer], tail], dim=-1) for layer in range(root.num_layers)], reserve=reserve)
    visible, extra = None, 0
    if plan.ragged:
        visible = [torch.cat([plan.valid[layer], torch.ones_like(tail, dtype=torch.bool)], dim=-1) for layer in range(root.num_layers)]
        extra += int((~plan.valid).sum()) * _row_bytes(cache)
        _padding_to_warm(cache, plan.valid)
    if plan.tri_state:
        full = [torch.cat([plan.full[layer], torch.ones_like(tail, dtype=torch.bool)], dim=-1) for layer in range(root.num_layers)]
        extra += cache.active.hold_quantized(full, plan.precision)
    return PlannedCache(cache, visible, extra)


def _row_bytes(cache: TieredCache) -> int:
    """K+V bytes of one row of one (layer, KV head)."""
    k = cache.active.keys(0)
    return 2 * k.shape[-1] * k.element_size()


def _padding_to_warm(cache: TieredCache, valid: torch.Tensor) -> None:
    """Each layer whose heads pad by the same count also offers its padding rows as warm candidates."""
    for layer in range(valid.shape[0]):
        padding = ~valid[layer]
        counts = padding.sum(-1)
        if int(counts[0]) == 0 or not bool((counts == counts[0]).all()):
            continue
        slots = padding.nonzero()[:, 1].view(valid.shape[1], -1)[None].to(cache.device)  # (1, heads, count), ascending
        cache.warm.add(layer, gather_rows(cache.active.keys(layer), slots), gather_rows(cache.active.values(layer), slots),
                       gather_rows(cache.active.positions(layer), slots))
