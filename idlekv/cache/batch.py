"""Several caches of one sample as one padded batch buffer, filled one cache at a time.

Caches continue the same original sequence (conditions of one sample). Each is copied into
its slot as soon as it is built (a fork's extra rows behind its base), so a caller can free
it at once: only the batch buffer holds the rows while the batch resumes. Shorter caches are
padded with zero rows that a (batch, rows) attention mask hides; padding is a compute
artefact, each cache's bytes are reported from its own tensors.
"""

from __future__ import annotations

import torch

from idlekv.cache.tiered import TieredCache, _empty_dynamic_cache, _headroom_layer_class


class CacheBatch:
    def __init__(self, rows: list[int], like: TieredCache, headroom: int = 0):
        """Slots for caches of `rows` rows, shaped like `like`, with `headroom` rows of room for the next forwards."""
        self.rows, self.seen_tokens, self.width = list(rows), like.seen_tokens, max(rows)
        active = like.active
        shape = (len(rows), active.kv_heads, self.width + headroom, active.head_dim)
        self.keys = [torch.zeros(shape, dtype=active.dtype, device=active.device) for _ in range(like.num_layers)]
        self.values = [torch.zeros(shape, dtype=active.dtype, device=active.device) for _ in range(like.num_layers)]
        self.device = active.device

    def __len__(self) -> int:
        return len(self.rows)

    def put(self, slot: int, cache: TieredCache) -> None:
        if cache.seen_tokens != self.seen_tokens:
            raise ValueError(f"only caches continuing the same sequence batch; got original lengths "
                             f"{cache.seen_tokens} and {self.seen_tokens}")
        if cache.rows != self.rows[slot]:
            raise ValueError(f"slot {slot} was sized for {self.rows[slot]} rows; the cache holds {cache.rows}")
        for i, (keys, values) in enumerate(zip(self.keys, self.values)):
            start = 0
            for k, v, _ in cache.active.segments(i):
                keys[slot : slot + 1, :, start : start + k.shape[-2]].copy_(k)
                values[slot : slot + 1, :, start : start + k.shape[-2]].copy_(v)
                start += k.shape[-2]

    def position_ids(self, length: int) -> torch.Tensor:
        return torch.arange(self.seen_tokens, self.seen_tokens + length, device=self.device).expand(len(self), length)

    def to_hf(self):
        """(transformers cache over the buffers, padding mask or None); new rows are written in the headroom."""
        cache, layer_class = _empty_dynamic_cache(), _headroom_layer_class()
        for keys, values in zip(self.keys, self.values):
            layer = layer_class()
            layer.hold(keys, values, self.width)
            cache.layers.append(layer)
        if len(set(self.rows)) == 1:
            return cache, None
        mask = torch.zeros(len(self), self.width, dtype=torch.long, device=self.device)
        for b, r in enumerate(self.rows):
            mask[b, :r] = 1
        return cache, mask


def stack_to_hf(caches: list[TieredCache], headroom: int = 0):
    """One transformers cache holding several caches as a batch, and its padding mask (None when equal)."""
    lengths = {c.seen_tokens for c in caches}
    if len(lengths) != 1:
        raise ValueError(f"only caches continuing the same sequence stack; got original lengths {sorted(lengths)}")
    batch = CacheBatch([c.rows for c in caches], caches[0], headroom)
    for slot, cache in enumerate(caches):
        batch.put(slot, cache)
    return batch.to_hf()
