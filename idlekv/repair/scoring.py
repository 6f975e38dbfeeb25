"""Next-turn scores of cached rows.

exact: post-RoPE queries of the next-turn prompt, computed over the compressed active
cache; logits q.k/sqrt(d) against the active keys and every warm key; softmax over both;
max over the next-turn tokens; mean over the query heads of each KV head. One score per
(layer, KV head, row). Layer and head aggregation happen at selection (granularity).
proxy: the same with the next-turn tokens' own key rows as queries (one per KV head).

Warm keys stream to the model's device in chunks (dequantized there); the softmax
normaliser is accumulated over chunks first, so nothing runs on the CPU in fp32 unless the
model does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from idlekv.cache import TieredCache
from idlekv.cache.quant import QuantizedRows, dequantize
from idlekv.cache.selection import gather_rows
from idlekv.repair.granularity import unit_scores


@dataclass
class RowScores:
    """Per layer, scores and positions of the warm rows present (and of the active rows)."""

    warm: list[torch.Tensor]  # (kv_heads, m)
    warm_positions: list[torch.Tensor]  # (kv_heads, m)
    warm_slots: list[torch.Tensor]  # (kv_heads, m) warm-tier slots
    active: list[torch.Tensor]  # (kv_heads, r)
    active_positions: list[torch.Tensor]  # (kv_heads, r)
    _units: dict = field(default_factory=dict, repr=False, compare=False)

    def units(self, length: int, granularity: str, rows: str = "warm") -> torch.Tensor:
        """(units, length) unit scores of the warm rows, or of every row below `length`
        (rows="context": active and warm); computed once, since every K of a B asks again."""
        key = (rows, length, granularity)
        if key not in self._units:
            if rows == "warm":
                values, positions = self.warm, self.warm_positions
            elif rows == "context":
                values, positions = [], []
                for a, w, pa, pw in zip(self.active, self.warm, self.active_positions, self.warm_positions):
                    v, p = torch.cat([a, w], dim=-1), torch.cat([pa.to(pw.device), pw], dim=-1)
                    inside = p < length  # the tail (every head holds all of it) is never a context row
                    values.append(v[inside].view(v.shape[0], -1))
                    positions.append(p[inside].view(p.shape[0], -1))
            else:
                raise ValueError(f"rows {rows!r} not in ('warm', 'context')")
            self._units[key] = unit_scores(values, positions, length, granularity)
        return self._units[key]


def _grouped_logits(queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """queries (Hq, T, d), already scaled; keys (H, n, d) -> logits (H, g*T, n) without repeating keys."""
    heads, group = keys.shape[0], queries.shape[0] // keys.shape[0]
    return queries.reshape(heads, group * queries.shape[1], queries.shape[2]) @ keys.transpose(-1, -2)


def _warm_key_chunks(cache: TieredCache, layer: int, slots: torch.Tensor, chunk_rows: int, device, dtype):
    stored = cache.warm._k[layer]
    on_cuda = torch.device(device).type == "cuda"
    # Every slot present, in order (the usual case right after a compression): chunks are
    # slices of the storage, so no row is copied to gather them.
    in_order = bool((slots == torch.arange(slots.shape[-1], device=slots.device)).all())
    for start in range(0, slots.shape[-1], chunk_rows):
        if in_order:
            end = min(start + chunk_rows, slots.shape[-1])
            part = QuantizedRows(stored.data[:, :, start:end], None if stored.scale is None else stored.scale[:, :, start:end])
        else:
            idx = slots[None, :, start : start + chunk_rows]
            part = QuantizedRows(gather_rows(stored.data, idx), None if stored.scale is None else gather_rows(stored.scale, idx))
        yield dequantize(part.to(device, non_blocking=on_cuda, pin=on_cuda), dtype)[0]


def _reduce(logits: torch.Tensor, lse: torch.Tensor, heads: int, group: int, tokens: int) -> torch.Tensor:
    """max over tokens of softmax probabilities, mean over a KV head's query heads.

    exp is monotonic, so the max over tokens is taken on (logit - lse) before exponentiating:
    one exp per (head, row) instead of one per (head, token, row).
    """
    shifted = (logits.float() - lse[..., None]).view(heads, group, tokens, -1)
    return shifted.amax(dim=2).exp().mean(dim=1)


def default_chunk_rows(device: torch.device) -> int:
    """Warm rows per scoring chunk: on a CPU a chunk's logits must stay cache-resident
    (512 rows measured 3x faster than 8192 on the 2-core dev machine); a GPU wants big chunks."""
    return 8192 if torch.device(device).type == "cuda" else 512


@torch.no_grad()
def score_rows(cache: TieredCache, queries: list[torch.Tensor], chunk_rows: int | None = None,
               compute_dtype: torch.dtype | None = None, max_logit_bytes: int = 1 << 30) -> RowScores:
    """Scores of every active and warm row of `cache` for the next-turn `queries` (per layer (Hq, T, d)).

    Computed in the model's dtype on the model's device (matmuls accumulate in fp32; the
    softmax runs in fp32). Warm keys stream in chunks; their logits are kept until the
    normaliser is known unless they would exceed `max_logit_bytes`, in which case each
    chunk is recomputed in a second pass instead.
    """
    device = cache.active.device
    dtype = compute_dtype or cache.active.dtype
    chunk_rows = chunk_rows or default_chunk_rows(device)
    out = RowScores([], [], [], [], [])
    for layer in range(cache.num_layers):
        heads = cache.active.kv_heads
        q = queries[layer].to(device, dtype) * queries[layer].shape[-1] ** -0.5
        group, tokens = q.shape[0] // heads, q.shape[1]
        active_logits = _grouped_logits(q, cache.active.keys(layer)[0].to(dtype))
        lse = torch.logsumexp(active_logits.float(), dim=-1)
        slots, positions = cache.warm.candidates(layer)
        slots, positions = (slots[0], positions[0]) if slots.numel() else (slots.view(heads, 0), positions.view(heads, 0))
        keep = heads * group * tokens * slots.shape[-1] * torch.empty((), dtype=dtype).element_size() <= max_logit_bytes
        kept = []
        for keys in _warm_key_chunks(cache, layer, slots, chunk_rows, device, dtype):
            logits = _grouped_logits(q, keys)
            lse = torch.logaddexp(lse, torch.logsumexp(logits.float(), dim=-1))
            if keep:
                kept.append(logits)
        chunks = kept if keep else (_grouped_logits(q, k) for k in _warm_key_chunks(cache, layer, slots, chunk_rows, device, dtype))
        warm = [_reduce(c, lse, heads, group, tokens) for c in chunks]
        out.warm.append(torch.cat(warm, dim=-1) if warm else torch.zeros(heads, 0, device=device))
        out.warm_positions.append(positions.to(device))
        out.warm_slots.append(slots)
        out.active.append(_reduce(active_logits, lse, heads, group, tokens))
        out.active_positions.append(cache.active.positions(layer)[0])
    return out


def proxy_queries(new_keys: list[torch.Tensor]) -> list[torch.Tensor]:
    """Proxy signal: the next-turn tokens' key rows (per layer (1, H, T, d)) used as queries."""
    return [k[0] for k in new_keys]
