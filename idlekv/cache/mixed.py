"""Active rows held in two precisions (ARKV's tri-state: full, quantized, evicted).

Each layer keeps the same number of rows per KV head (transformers' equal-length layout) but
its own split between full-precision rows and rows stored quantized (fp8 e4m3 or int8 with one
scale per row). The quantized rows are what is held; a forward sees them dequantized into a
transient copy built by `to_hf()`, so `bytes()` counts what stays resident between forwards:
full rows + quantized rows + scales. Rows a forward appends (the next turn) stay in full precision.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from idlekv.cache.quant import QuantizedRows, dequantize, quantize
from idlekv.cache.tiered import TieredCache, dynamic_cache


@dataclass(frozen=True)
class MixedBytes:
    full: int  # keys + values of full-precision rows
    quantized: int  # keys + values of quantized rows, as stored
    scales: int  # their per-row scales

    @property
    def total(self) -> int:
        return self.full + self.quantized + self.scales


class MixedPrecisionCache:
    def __init__(self, full_k, full_v, quant_k: Sequence[QuantizedRows], quant_v: Sequence[QuantizedRows], seen_tokens: int):
        self.full_k, self.full_v = list(full_k), list(full_v)
        self.quant_k, self.quant_v = list(quant_k), list(quant_v)
        self.seen_tokens = seen_tokens

    @classmethod
    def from_tiered(cls, cache: TieredCache, full: Sequence[torch.Tensor], precision: str = "fp8") -> "MixedPrecisionCache":
        """Split a (compressed) cache's active rows: full[l] is a (kv_heads, rows) bool mask of
        the rows kept in full precision, with the same count in every head of a layer."""
        fk, fv, qk, qv = [], [], [], []
        for layer, mask in enumerate(full):
            k, v = cache.active.keys(layer), cache.active.values(layer)  # (batch, heads, rows, d)
            counts = mask.sum(-1)
            if not bool((counts == counts[0]).all()):
                raise ValueError(f"layer {layer}: every KV head must keep the same number of full-precision rows")
            order = mask.to(torch.int8).argsort(dim=-1, descending=True, stable=True).to(k.device)  # full rows first
            n_full = int(counts[0])
            idx = order[None, :, :, None].expand(k.shape[0], -1, -1, k.shape[-1])
            k, v = k.gather(2, idx), v.gather(2, idx)
            fk.append(k[:, :, :n_full].clone())
            fv.append(v[:, :, :n_full].clone())
            qk.append(quantize(k[:, :, n_full:], precision))
            qv.append(quantize(v[:, :, n_full:], precision))
        return cls(fk, fv, qk, qv, cache.seen_tokens)

    @property
    def num_layers(self) -> int:
        return len(self.full_k)

    @property
    def device(self) -> torch.device:
        return self.full_k[0].device

    @property
    def rows(self) -> int:
        return self.full_k[0].shape[2] + self.quant_k[0].data.shape[2]

    def bytes(self) -> MixedBytes:
        full = sum(t.numel() * t.element_size() for t in self.full_k + self.full_v)
        data = sum(q.data.numel() * q.data.element_size() for q in self.quant_k + self.quant_v)
        return MixedBytes(full, data, sum(q.nbytes for q in self.quant_k + self.quant_v) - data)

    def position_ids(self, length: int) -> torch.Tensor:
        return torch.arange(self.seen_tokens, self.seen_tokens + length, device=self.device).expand(self.full_k[0].shape[0], length)

    def to_hf(self, headroom: int = 0):
        """A DynamicCache over full rows + the quantized rows dequantized (a transient copy)."""
        dtype = self.full_k[0].dtype
        return dynamic_cache([torch.cat([f, dequantize(q, dtype)], dim=2) for f, q in zip(self.full_k, self.quant_k)],
                             [torch.cat([f, dequantize(q, dtype)], dim=2) for f, q in zip(self.full_v, self.quant_v)])

    def absorb(self, cache) -> int:
        """Keep the rows a forward appended to `to_hf()`'s cache, in full precision."""
        old = self.rows
        new = cache.layers[0].keys.shape[-2] - old
        if new < 0 or any(layer.keys.shape[-2] - old != new for layer in cache.layers):
            raise ValueError("the cache was not produced by a forward over this cache's to_hf() view")
        if new:
            for i, layer in enumerate(cache.layers):
                self.full_k[i] = torch.cat([self.full_k[i], layer.keys[:, :, old:]], dim=2)
                self.full_v[i] = torch.cat([self.full_v[i], layer.values[:, :, old:]], dim=2)
            self.seen_tokens += new
        return new
