"""Page digests of the warm tier (Quest's page summary) and the `digest` signal that reads them.

When rows enter the warm tier, each layer and KV head groups them into pages of P consecutive
evicted rows and keeps the elementwise min and max of their post-RoPE keys on the model's
device. For a query q, sum over dims of max(q*min, q*max) bounds q.k for every key of the page
(Quest, Tang et al. 2024). The digest signal scores pages by that bound, aggregated over the
next-turn tokens and query heads as the exact signal aggregates its probabilities, keeps the
best pages per KV head, and scores only their rows exactly: its cost grows with the pages kept,
not with the warm tier. Rows of pages not kept score 0 (no probability was computed for them).

The softmax normaliser of the kept rows' scores sums the active rows and the kept rows only (the
rows not read are not summed), so a kept row's probability is at least its exact one; with every
page kept the signal is the exact signal (tested).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from idlekv.cache.quant import dequantize
from idlekv.cache.selection import gather_rows


@dataclass(frozen=True)
class DigestOptions:
    page_rows: int = 16  # P: consecutive evicted rows per page (Quest's page size)
    kept_pages: int = 64  # pages per KV head scored exactly, at least ...
    kept_fraction: float = 0.0  # ... or this share of the pages present, whichever is more

    def __post_init__(self):
        if self.page_rows < 1 or self.kept_pages < 1 or not 0.0 <= self.kept_fraction <= 1.0:
            raise ValueError(f"digest options out of range: {self}")

    def pages_to_keep(self, pages: int) -> int:
        return min(pages, max(self.kept_pages, math.ceil(self.kept_fraction * pages)))


class PageDigest:
    """Per layer: min and max keys (batch, kv_heads, pages, head_dim) on the model's device, and
    each page's first storage slot and row count (pages,), the same for every head (the warm
    tier stores equal row counts per head). Pages never span two evictions. Tensors are replaced,
    never written in place, so forks share them."""

    def __init__(self, num_layers: int, page_rows: int):
        self.page_rows = page_rows
        self._min: list[torch.Tensor | None] = [None] * num_layers
        self._max: list[torch.Tensor | None] = [None] * num_layers
        self._start: list[torch.Tensor | None] = [None] * num_layers
        self._rows: list[torch.Tensor | None] = [None] * num_layers

    def add(self, layer: int, keys: torch.Tensor, first_slot: int) -> None:
        """Pages of `keys` (batch, kv_heads, n, head_dim), stored from warm slot `first_slot` on."""
        n, p = keys.shape[-2], self.page_rows
        full = n // p
        mins, maxs = [], []
        if full:
            paged = keys[:, :, : full * p].unflatten(2, (full, p))
            mins.append(paged.amin(3))
            maxs.append(paged.amax(3))
        if n % p:
            mins.append(keys[:, :, full * p :].amin(2, keepdim=True))
            maxs.append(keys[:, :, full * p :].amax(2, keepdim=True))
        starts = torch.arange(0, n, p) + first_slot
        rows = (torch.full_like(starts, p) if n % p == 0 else torch.cat([torch.full((full,), p), torch.tensor([n % p])]))
        new = (torch.cat(mins, dim=2), torch.cat(maxs, dim=2), starts, rows)
        if self._min[layer] is not None:
            new = tuple(torch.cat([old, part], dim=2 if part.dim() == 4 else 0)
                        for old, part in zip((self._min[layer], self._max[layer], self._start[layer], self._rows[layer]), new))
        self._min[layer], self._max[layer], self._start[layer], self._rows[layer] = new

    def pages(self, layer: int) -> int:
        return 0 if self._start[layer] is None else self._start[layer].shape[0]

    @property
    def nbytes(self) -> int:
        """Device bytes of the min/max keys (the page table's slots and counts are on the host)."""
        return sum(t.numel() * t.element_size() for t in self._min + self._max if t is not None)

    def present_rows(self, layer: int, present: torch.Tensor) -> torch.Tensor:
        """Rows still in the warm tier per page (batch, kv_heads, pages): promotion marks rows absent."""
        if bool(present.all()):  # nothing promoted since the pages were made: no scan
            return self._rows[layer].to(present.device).expand(*present.shape[:-1], -1)
        counts = torch.nn.functional.pad(present.to(torch.int32).cumsum(-1), (1, 0))
        start = self._start[layer].to(counts.device)
        end = start + self._rows[layer].to(counts.device)
        return counts[..., end] - counts[..., start]

    def bounds(self, layer: int, grouped: torch.Tensor) -> torch.Tensor:
        """Quest's bound of every page's logits: grouped queries (H, d, g*T) -> (H, pages, g*T)."""
        lo, hi = self._min[layer][0].to(grouped.dtype), self._max[layer][0].to(grouped.dtype)
        return torch.bmm(lo, grouped.clamp(max=0)).baddbmm_(hi, grouped.clamp(min=0))  # the sum in place: no third tensor

    def page_slots(self, layer: int, pages: torch.Tensor, device) -> tuple[torch.Tensor, torch.Tensor]:
        """Warm slots of the rows of `pages` (H, n) -> (H, n * P) slots and whether each is a row of its page."""
        start = self._start[layer].to(device)[pages]
        rows = self._rows[layer].to(device)[pages]
        offset = torch.arange(self.page_rows, device=device)
        inside = (offset < rows[..., None]).flatten(-2)
        # past a short page's end, repeat its last row: the slot stays in range and in the page
        slots = (start[..., None] + torch.minimum(offset, rows[..., None] - 1)).flatten(-2)
        return slots, inside

    def fork(self) -> "PageDigest":
        twin = object.__new__(PageDigest)
        twin.page_rows = self.page_rows
        twin._min, twin._max, twin._start, twin._rows = list(self._min), list(self._max), list(self._start), list(self._rows)
        return twin


@torch.no_grad()
def digest_rows(cache, queries: list[torch.Tensor], options: DigestOptions, active_visible: list[torch.Tensor] | None = None):
    """RowScores of every warm row (0 outside the kept pages) and every active row, from the digest."""
    from idlekv.repair.scoring import RowScores, _add_rows, _Buffers, _grouped_queries, _log2sumexp2, _logits, _reduce

    digest = cache.warm.digest
    if digest is None:
        raise ValueError("the warm tier keeps no page digest: call cache.warm.keep_digest(page_rows) before compressing")
    device, dtype = cache.active.device, cache.active.dtype
    out = RowScores([], [], [], [], [])
    buffers = _Buffers(device)
    for layer in range(cache.num_layers):
        heads = cache.active.kv_heads
        q = queries[layer].to(device, dtype) * (queries[layer].shape[-1] ** -0.5 * math.log2(math.e))
        group, tokens = q.shape[0] // heads, q.shape[1]
        q = _grouped_queries(q, heads)
        active = _logits(cache.active.keys(layer)[0].to(dtype), q, buffers, "active")
        if active_visible is not None:
            active.masked_fill_(~active_visible[layer].to(device)[:, :, None], float("-inf"))
        lse2 = _log2sumexp2(active, buffers)
        slots, positions = cache.warm.candidates(layer)
        slots, positions = (slots[0], positions[0]) if slots.numel() else (slots.view(heads, 0), positions.view(heads, 0))
        warm = torch.zeros(slots.shape, device=device)
        if digest.pages(layer) and slots.shape[-1]:
            present = digest.present_rows(layer, cache.warm.present(layer))[0].to(device)
            page_score = _reduce(digest.bounds(layer, q), lse2, group, tokens, buffers)
            page_score.masked_fill_(present == 0, float("-inf"))
            kept = page_score.topk(options.pages_to_keep(int((present > 0).sum(-1).max())), dim=-1).indices
            rows, inside = digest.page_slots(layer, kept, device)
            inside &= torch.gather(cache.warm.present(layer)[0].to(device), 1, rows)
            keys = dequantize(cache.warm._k[layer].map(lambda t: gather_rows(t, rows[None].to(t.device))).map(cache.warm.upload), dtype)[0]
            logits = _logits(keys, q, buffers, "kept")
            logits.masked_fill_(~inside[:, :, None], float("-inf"))
            lse2 = _add_rows(lse2, logits, buffers)
            scores = _reduce(logits, lse2, group, tokens, buffers).masked_fill_(~inside, 0.0)
            dense = torch.zeros(heads, cache.warm.storage_rows(layer), device=device)
            dense.scatter_reduce_(1, rows, scores, "amax")  # a row outside its page repeats its page's first slot, at 0
            warm = torch.gather(dense, 1, slots.to(device))
        out.warm.append(warm)
        out.warm_positions.append(positions.to(device))
        out.warm_slots.append(slots)
        out.active.append(_reduce(active, lse2, group, tokens, buffers))
        out.active_positions.append(cache.active.positions(layer)[0])
    return out
