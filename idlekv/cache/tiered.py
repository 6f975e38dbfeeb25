"""TieredCache: an active tier on the model's device plus a warm tier in host memory.

Keys are stored post-RoPE, so a row's attention logit depends only on the query and the
row itself: the order of rows in the cache does not matter to attention (softmax over a
set), and every cached row lies in the past of any new token, so the causal mask over the
cache is all ones. Promoted rows are therefore appended, never re-sorted, and new tokens
get position_ids that continue from the ORIGINAL sequence length, not the cache length.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import torch

from idlekv.cache.active import ActiveTier
from idlekv.cache.selection import Selection, normalize_selection
from idlekv.cache.transfer import TransferPlan
from idlekv.cache.warm import WarmTier


@dataclass(frozen=True)
class TierBytes:
    active_kv: int  # keys + values of the rows the model attends to
    active_allocated: int  # device buffers, reserved capacity included
    warm_kv: int  # rows present in this cache's warm tier, as stored (scales included)
    warm_storage: int  # host storage held (shared by forks)
    digest: int = 0  # the warm tier's page digest on the model's device (idlekv/repair/digest.py), when it keeps one


class TieredCache:
    def __init__(self, active: ActiveTier, warm: WarmTier, seen_tokens: int):
        self.active = active
        self.warm = warm
        self.seen_tokens = seen_tokens  # original sequence length: next token's position

    # --- construction ------------------------------------------------------------------
    @classmethod
    def from_tensors(
        cls,
        keys: Sequence[torch.Tensor],
        values: Sequence[torch.Tensor],
        positions: Sequence[torch.Tensor] | None = None,
        warm_precision: str = "model",
    ) -> "TieredCache":
        if positions is None:
            b, h, n, _ = keys[0].shape
            pos = torch.arange(n, device=keys[0].device).expand(b, h, n)
            positions = [pos] * len(keys)
        seen = int(max(int(p.max()) for p in positions)) + 1 if positions[0].numel() else 0
        plan = TransferPlan.for_device(keys[0].device)
        return cls(ActiveTier(keys, values, positions), WarmTier(len(keys), warm_precision, plan), seen)

    @classmethod
    def empty(cls, num_layers: int, kv_heads: int, head_dim: int, capacity: int, dtype: torch.dtype, device,
              warm_precision: str = "model") -> "TieredCache":
        """A cache with no rows and room for `capacity`: a prefill and its turns are written in place."""
        keys = [torch.empty(1, kv_heads, 0, head_dim, dtype=dtype, device=device) for _ in range(num_layers)]
        positions = [torch.empty(1, kv_heads, 0, dtype=torch.long, device=device)] * num_layers
        active = ActiveTier(keys, [k.clone() for k in keys], positions, capacity=capacity)
        return cls(active, WarmTier(num_layers, warm_precision, TransferPlan.for_device(device)), 0)

    @classmethod
    def from_hf(cls, cache, warm_precision: str = "model") -> "TieredCache":
        """Adopt a prefilled transformers cache (rows at positions 0..n-1)."""
        keys = [layer.keys for layer in cache.layers]
        values = [layer.values for layer in cache.layers]
        return cls.from_tensors(keys, values, None, warm_precision)

    # --- geometry ----------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return self.active.num_layers

    @property
    def device(self) -> torch.device:
        return self.active.device

    @property
    def rows(self) -> int:
        return self.active.rows

    def bytes(self) -> TierBytes:
        digest = 0 if self.warm.digest is None else self.warm.digest.nbytes
        return TierBytes(self.active.kv_nbytes, self.active.allocated_nbytes, self.warm.kv_nbytes, self.warm.storage_nbytes, digest)

    def _normalize(self, selection) -> Selection:
        return normalize_selection(selection, self.num_layers, self.active.batch, self.active.kv_heads)

    # --- the operations ------------------------------------------------------------------
    def compress(self, keep: torch.Tensor | Sequence[torch.Tensor], reserve: int = 0, warm: bool = True) -> None:
        """Keep the given active rows per layer/head; the rest move to the warm tier (or are
        dropped, with `warm=False`, for a cache that never repairs).

        `reserve` rows of device capacity are allocated beside the kept rows so that a
        later turn of up to that many rows is written in place.
        """
        keep = self._normalize(keep)
        if keep[0].shape[-1] > self.rows:
            raise ValueError(f"cannot keep {keep[0].shape[-1]} rows: the active tier holds {self.rows}")
        if not warm:
            self.active = self.active.gather(keep, reserve=reserve)
            return
        self.active, evicted = self.active.split(keep, reserve=reserve)
        for layer, (k, v, p) in enumerate(evicted):
            if k.shape[-2]:
                self.warm.add(layer, k, v, p)

    @torch.no_grad()
    def promote(self, slots: torch.Tensor | Sequence[torch.Tensor]) -> None:
        """Move the selected warm rows (slot indices per layer/head) into the active tier."""
        slots = [s.cpu() for s in self._normalize(slots)]  # warm slots index host storage
        self.warm.check(slots)
        count = slots[0].shape[-1]
        self.warm.take_into(slots, self.active.open_rows(count))  # gathered once, straight into the reserved rows
        self.active.commit_rows(count)

    def promote_positions(self, positions: torch.Tensor | Sequence[torch.Tensor]) -> None:
        """Promote by original token position instead of warm slot."""
        positions = self._normalize(positions)
        self.promote([self.warm.slots_for_positions(i, p) for i, p in enumerate(positions)])

    def drop_warm(self, slots: torch.Tensor | Sequence[torch.Tensor]) -> None:
        self.warm.drop(self._normalize(slots))

    def fork(self) -> "TieredCache":
        """A cheap independent copy: buffers and host storage are shared copy-on-write."""
        return TieredCache(self.active.fork(), self.warm.fork(), self.seen_tokens)

    # --- talking to transformers -----------------------------------------------------------
    def position_ids(self, length: int) -> torch.Tensor:
        """Positions for the next `length` tokens, continuing the original sequence."""
        start = self.seen_tokens
        return torch.arange(start, start + length, device=self.active.device).expand(self.active.batch, length)

    def to_hf(self, headroom: int = 0, scratch: bool = False):
        """A transformers cache over the active rows (no copy of them).

        A forward's new rows are written in place behind the rows when the buffers are this
        cache's own (`headroom` makes room for that many first), or when `scratch` says the
        caller only wants the forward's outputs: then they go to spare capacity that no fork
        reads, and are never absorbed. Otherwise they are concatenated onto a copy."""
        if headroom and not scratch:
            self.active.reserve(headroom)
        if self.active.extra_rows:  # transformers needs each layer's rows in one tensor
            self.active.own()
        in_place = scratch or not self.active._shared
        layer_class, cache = _headroom_layer_class(), _empty_dynamic_cache()
        for i in range(self.num_layers):
            layer = layer_class()
            k, v = self.active._k[i], self.active._v[i]
            rows = self.active.rows
            layer.hold(k if in_place else k[:, :, :rows], v if in_place else v[:, :, :rows], rows)
            cache.layers.append(layer)
        return cache

    def absorb(self, cache) -> int:
        """Take in the rows a forward appended to `to_hf()`'s cache; returns how many."""
        lengths = {layer.keys.shape[-2] for layer in cache.layers}
        if len(lengths) != 1 or lengths.pop() < self.rows:
            raise ValueError("the cache was not produced by a forward over this TieredCache's to_hf() view")
        new = cache.layers[0].keys.shape[-2] - self.rows
        if new == 0:
            return 0
        positions = self.position_ids(new).unsqueeze(1).expand(-1, self.active.kv_heads, -1)
        in_place = all(layer.keys.data_ptr() == self.active._k[i].data_ptr() for i, layer in enumerate(cache.layers))
        if in_place and not self.active._shared and self.active.extra_rows == 0:
            self.active.written_in_place(new, positions)
        else:
            self.active.append([layer.keys[:, :, self.rows :] for layer in cache.layers],
                               [layer.values[:, :, self.rows :] for layer in cache.layers], [positions] * self.num_layers)
        self.seen_tokens += new
        return new


def _empty_dynamic_cache():
    from transformers import DynamicCache

    cache = DynamicCache()
    cache.layers.clear()
    return cache


def dynamic_cache(keys: Sequence[torch.Tensor], values: Sequence[torch.Tensor]):
    """A transformers DynamicCache holding these per-layer tensors as they are (no copy)."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    cache = DynamicCache()
    for k, v in zip(keys, values):
        layer = DynamicLayer()
        layer.lazy_initialization(k, v)
        layer.keys, layer.values = k, v
        cache.layers.append(layer)
    return cache


@lru_cache(maxsize=1)
def _headroom_layer_class():
    from transformers.cache_utils import DynamicLayer

    class HeadroomLayer(DynamicLayer):
        """A DynamicLayer whose rows sit at the front of a larger buffer: a forward's new rows
        are written in place behind them instead of concatenated onto a fresh copy of the
        whole layer at every decoded token. Past the buffer it concatenates like its parent."""

        def hold(self, keys: torch.Tensor, values: torch.Tensor, rows: int) -> None:
            self.lazy_initialization(keys, values)
            self._key_buffer, self._value_buffer = keys, values
            self.keys, self.values = keys[:, :, :rows], values[:, :, :rows]

        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
            n, m = self.keys.shape[-2], key_states.shape[-2]
            if n + m > self._key_buffer.shape[-2] or self.keys.data_ptr() != self._key_buffer.data_ptr():
                return super().update(key_states, value_states, *args, **kwargs)
            self._key_buffer[:, :, n : n + m].copy_(key_states)
            self._value_buffer[:, :, n : n + m].copy_(value_states)
            self.keys, self.values = self._key_buffer[:, :, : n + m], self._value_buffer[:, :, : n + m]
            return self.keys, self.values

    return HeadroomLayer
