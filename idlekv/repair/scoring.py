"""Next-turn scores of cached rows.

exact: post-RoPE queries of the next-turn prompt, computed over the compressed active
cache; logits q.k/sqrt(d) against the active keys and every warm key; softmax over both;
max over the next-turn tokens; mean over the query heads of each KV head. One score per
(layer, KV head, row). Layer and head aggregation happen at selection (granularity).
proxy: the same with the next-turn tokens' own key rows as queries (one per KV head).

Warm keys stream to the model's device in chunks (dequantized there); the softmax
normaliser is accumulated over chunks first, so nothing runs on the CPU in fp32 unless the
model does. Logits are computed in base 2 (log2(e) folded into the query scale), the same
softmax to fp32 rounding: exp2 is about 2.5x cheaper than exp on a CPU, where the
normaliser's one exponential per logit otherwise costs more than the logits' matmul.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from idlekv.cache import TieredCache
from idlekv.cache.quant import dequantize
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


def _grouped_queries(queries: torch.Tensor, heads: int) -> torch.Tensor:
    """(Hq, T, d) -> (H, d, g*T): each KV head's query group as one contiguous right operand."""
    group = queries.shape[0] // heads
    return queries.reshape(heads, group * queries.shape[1], queries.shape[2]).transpose(-1, -2).contiguous()


class _Buffers:
    """Flat buffers reused under a name (every layer and chunk asks again): a CPU would
    otherwise fault in fresh pages for each chunk's logits."""

    def __init__(self, device):
        self.device, self._flat = device, {}

    def get(self, name, shape, dtype=torch.float32) -> torch.Tensor:
        numel, flat = math.prod(shape), self._flat.get(name)
        if flat is None or flat.numel() < numel or flat.dtype != dtype:
            flat = self._flat[name] = torch.empty(numel, dtype=dtype, device=self.device)
        return flat[:numel].view(shape)


def _logits(keys: torch.Tensor, grouped: torch.Tensor, buffers: _Buffers, name) -> torch.Tensor:
    """Logits keys (H, n, d) @ grouped queries (H, d, g*T) -> (H, n, g*T), in the keys'
    dtype, in buffer `name`, without repeating keys.

    Rows first: a chunk of the warm storage is then a plain left operand (a slice with a row
    stride of d), where keys on the right would be copied to a contiguous transpose per chunk."""
    return torch.bmm(keys, grouped, out=buffers.get(name, (keys.shape[0], keys.shape[1], grouped.shape[-1]), keys.dtype))


def _wide(logits: torch.Tensor, buffers: _Buffers) -> torch.Tensor:
    """An fp32 copy of `logits` to work on in place. Kept logits stay in the model's dtype:
    reading them back from memory costs more than widening them twice (measured)."""
    return buffers.get("wide", logits.shape).copy_(logits)


def _warm_key_chunks(cache: TieredCache, layer: int, slots: torch.Tensor, chunk_rows: int, dtype):
    """The warm keys of `slots`, chunk by chunk, dequantized on the model's device (uploaded
    through the warm tier's pinned staging buffer on CUDA: contiguous, asynchronous)."""
    stored = cache.warm._k[layer]
    # Every slot present, in order (the usual case right after a compression): chunks are
    # slices of the storage, so no row is copied to gather them.
    in_order = bool((slots == torch.arange(slots.shape[-1], device=slots.device)).all())
    for start in range(0, slots.shape[-1], chunk_rows):
        if in_order:
            end = min(start + chunk_rows, slots.shape[-1])
            part = stored.map(lambda t: t[:, :, start:end])  # noqa: B023
        else:
            idx = slots[None, :, start : start + chunk_rows]
            part = stored.map(lambda t: gather_rows(t, idx))  # noqa: B023
        yield dequantize(part.map(cache.warm.upload), dtype)[0]


def _log2sumexp2(logits: torch.Tensor, buffers: _Buffers) -> torch.Tensor:
    """log2(sum(2**logits)) over the rows (dim 1 of (H, n, g*T)), in fp32, max-shifted; -inf
    when there are no rows."""
    if logits.shape[1] == 0:
        return torch.full((logits.shape[0], logits.shape[2]), float("-inf"), device=logits.device)
    x = _wide(logits, buffers)
    top = x.amax(dim=1, keepdim=True)
    return x.sub_(top).exp2_().sum(dim=1).log2_() + top[:, 0]


def _add_rows(lse2: torch.Tensor, logits: torch.Tensor, buffers: _Buffers) -> torch.Tensor:
    """The normaliser `lse2` (H, g*T) with a chunk of rows' logits (H, n, g*T) added.

    The running normaliser is the shift instead of the chunk's own max (a pass saved): the
    chunk's terms are then at most 2**(l - lse2), which only overflows for a logit 128 above
    every row seen so far; then, or before any row was seen, the chunk takes its own max.
    """
    if logits.shape[1] == 0:
        return lse2
    ratio = _wide(logits, buffers).sub_(lse2[:, None, :]).exp2_().sum(dim=1)
    if not bool(torch.isfinite(ratio).all()):
        return torch.logaddexp2(lse2, _log2sumexp2(logits, buffers))
    return lse2 + torch.log1p(ratio) / math.log(2.0)


def _reduce(logits: torch.Tensor, lse2: torch.Tensor, group: int, tokens: int, buffers: _Buffers) -> torch.Tensor:
    """Per row, max over tokens of softmax probabilities, mean over a KV head's query heads:
    base-2 logits (H, n, g*T) and their fp32 normaliser (H, g*T) -> (H, n).

    exp2 is monotonic, so the max over tokens is taken on (logit - lse) before exponentiating:
    one exp2 per (head, row) instead of one per (head, token, row).
    """
    shifted = _wide(logits, buffers).sub_(lse2[:, None, :])
    return shifted.view(logits.shape[0], -1, group, tokens).amax(dim=-1).exp2().mean(dim=-1)


def default_chunk_rows(device: torch.device) -> int:
    """Warm rows per scoring chunk: on a CPU a chunk's logits must stay cache-resident (on the
    2-core dev machine, Qwen-shaped tiers at 32K: 256 / 512 / 1024 / 2048 rows took 1.44 /
    1.28 / 1.19 / 1.25 s, and 8192 rows 3x longer); a GPU wants big chunks."""
    return 8192 if torch.device(device).type == "cuda" else 1024


@torch.no_grad()
def score_rows(cache: TieredCache, queries: list[torch.Tensor], chunk_rows: int | None = None,
               compute_dtype: torch.dtype | None = None, max_logit_bytes: int | None = None,
               active_visible: list[torch.Tensor] | None = None) -> RowScores:
    """Scores of every active and warm row of `cache` for the next-turn `queries` (per layer (Hq, T, d)).

    `active_visible` (per layer (kv_heads, active rows), False = a ragged plan's masked padding):
    those rows take no share of the softmax and score 0, as attention never sees them.

    The logits' matmuls run in the model's dtype on the model's device (accumulating in
    fp32); the softmax runs in fp32. Warm keys stream in chunks; their logits are kept
    until the normaliser is known unless they would exceed `max_logit_bytes`, in which case
    each chunk is recomputed in a second pass instead.
    """
    device = cache.active.device
    dtype = compute_dtype or cache.active.dtype
    chunk_rows = chunk_rows or default_chunk_rows(device)
    if max_logit_bytes is None:  # a GPU keeps the logits of 1M rows rather than stream every warm key twice
        max_logit_bytes = (8 << 30) if torch.device(device).type == "cuda" else (1 << 30)
    out = RowScores([], [], [], [], [])
    buffers = _Buffers(device)  # reused by every layer
    for layer in range(cache.num_layers):
        heads = cache.active.kv_heads
        # 1/sqrt(d) and log2(e) in one scale: the logits come out in base 2
        q = queries[layer].to(device, dtype) * (queries[layer].shape[-1] ** -0.5 * math.log2(math.e))
        group, tokens = q.shape[0] // heads, q.shape[1]
        q = _grouped_queries(q, heads)
        active = _logits(cache.active.keys(layer)[0].to(dtype), q, buffers, "active")
        if active_visible is not None:
            active.masked_fill_(~active_visible[layer].to(device)[:, :, None], float("-inf"))
        lse2 = _log2sumexp2(active, buffers)
        slots, positions = cache.warm.candidates(layer)
        slots, positions = (slots[0], positions[0]) if slots.numel() else (slots.view(heads, 0), positions.view(heads, 0))
        keep = heads * group * tokens * slots.shape[-1] * q.element_size() <= max_logit_bytes
        kept = []
        for i, keys in enumerate(_warm_key_chunks(cache, layer, slots, chunk_rows, dtype)):
            logits = _logits(keys, q, buffers, ("kept", i) if keep else "chunk")
            if keep:
                kept.append(logits)
            lse2 = _add_rows(lse2, logits, buffers)
        chunks = kept if keep else (_logits(k, q, buffers, "chunk") for k in _warm_key_chunks(cache, layer, slots, chunk_rows, dtype))
        warm = [_reduce(c, lse2, group, tokens, buffers) for c in chunks]
        out.warm.append(torch.cat(warm, dim=-1) if warm else torch.zeros(heads, 0, device=device))
        out.warm_positions.append(positions.to(device))
        out.warm_slots.append(slots)
        out.active.append(_reduce(active, lse2, group, tokens, buffers))
        out.active_positions.append(cache.active.positions(layer)[0])
    return out


def proxy_queries(new_keys: list[torch.Tensor]) -> list[torch.Tensor]:
    """Proxy signal: the next-turn tokens' key rows (per layer (1, H, T, d)) used as queries."""
    return [k[0] for k in new_keys]


def centered_proxy_queries(new_keys: list[torch.Tensor], cache: TieredCache) -> list[torch.Tensor]:
    """The proxy's queries minus each head's mean active key: a key-as-query's dot product with a
    row otherwise rewards the row's alignment with the direction every key shares (the mean)."""
    return [k[0] - cache.active.keys(layer)[0].float().mean(dim=1, keepdim=True).to(k.dtype)
            for layer, k in enumerate(new_keys)]
