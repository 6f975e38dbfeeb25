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
    def __init__(self, rows: list[int], like: TieredCache, headroom: int = 0, seen: list[int] | None = None):
        """Slots for caches of `rows` rows, shaped like `like`, with `headroom` rows of room for the next forwards.

        `seen`: each slot's original sequence length (conversations whose answers differ in length
        continue at different positions); by default every slot continues `like`'s."""
        self.rows, self.width = list(rows), max(rows)
        self.seen = list(seen) if seen is not None else [like.seen_tokens] * len(rows)
        active = like.active
        shape = (len(rows), active.kv_heads, self.width + headroom, active.head_dim)
        self.keys = [torch.zeros(shape, dtype=active.dtype, device=active.device) for _ in range(like.num_layers)]
        self.values = [torch.zeros(shape, dtype=active.dtype, device=active.device) for _ in range(like.num_layers)]
        self.device = active.device

    def __len__(self) -> int:
        return len(self.rows)

    def put(self, slot: int, cache: TieredCache) -> None:
        if cache.seen_tokens != self.seen[slot]:
            raise ValueError(f"slot {slot} continues a sequence of {self.seen[slot]} tokens; the cache has seen {cache.seen_tokens}")
        if cache.rows != self.rows[slot]:
            raise ValueError(f"slot {slot} was sized for {self.rows[slot]} rows; the cache holds {cache.rows}")
        for i, (keys, values) in enumerate(zip(self.keys, self.values)):
            start = 0
            for k, v, _ in cache.active.segments(i):
                keys[slot : slot + 1, :, start : start + k.shape[-2]].copy_(k)
                values[slot : slot + 1, :, start : start + k.shape[-2]].copy_(v)
                start += k.shape[-2]

    def starts(self) -> torch.Tensor:
        """(batch,) the next token's position in each slot."""
        return torch.tensor(self.seen, device=self.device)

    def new_rows(self, slot: int, count: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per layer, the keys and values of the first `count` rows a resume wrote behind slot's rows."""
        return ([k[slot : slot + 1, :, self.width : self.width + count] for k in self.keys],
                [v[slot : slot + 1, :, self.width : self.width + count] for v in self.values])

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
    batch = CacheBatch([c.rows for c in caches], caches[0], headroom, [c.seen_tokens for c in caches])
    for slot, cache in enumerate(caches):
        batch.put(slot, cache)
    return batch.to_hf()
