"""Qwen2.5-7B-shaped tiered caches of any size, for timing the repair's envelope without weights.

Keys are synthetic; two models of them, named where they are reported:

- `iid`: every dimension N(0, 1): no structure at all, the worst case for a page summary;
- `rope`: post-RoPE keys (theta 1e6, Qwen2.5's) of a per-head mean direction plus N(0, 1) noise,
  with `spans` planted spans of 32 rows whose pre-RoPE keys also lean towards the next turn's mean
  query (the rows a next turn would look for). Real keys share a large mean component (the
  direction every key of a head has in common) that RoPE rotates slowly in its low frequencies,
  which is what makes neighbouring rows' keys alike; how far real keys are from this model is for
  a real model to say (docs/runtime.md).

To fit 1M candidates x 28 layers in a small host (keys alone are 28 GB), every layer holds the same
storage tensor (values alias the keys): each layer's rows are still read when it is scored or
promoted; the present masks and active rows are each layer's own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from idlekv.cache import TieredCache
from idlekv.repair.digest import PageDigest

KEY_MODELS = ("iid", "rope")
ROPE_THETA = 1e6  # Qwen2.5's
SPAN_ROWS = 32


@dataclass(frozen=True)
class Shape:
    layers: int = 28
    query_heads: int = 28
    kv_heads: int = 4
    head_dim: int = 128


QWEN_7B = Shape()


def rope(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE (as Llama/Qwen apply it) of x (..., n, d) at positions (n,)."""
    d = x.shape[-1]
    freqs = ROPE_THETA ** (-torch.arange(0, d, 2, dtype=torch.float32) / d)
    angles = positions.float()[:, None] * freqs[None, :]
    cos, sin = torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)
    half = torch.cat([-x[..., d // 2 :], x[..., : d // 2]], dim=-1)
    return x * cos + half * sin


@dataclass
class SyntheticPause:
    cache: TieredCache  # active rows + `candidates` warm rows per head, every layer aliasing one storage
    queries: list[torch.Tensor]  # per layer (query_heads, tokens, head_dim): the next turn's post-RoPE queries
    spans: torch.Tensor  # (spans, 2) [start, end) positions of the planted rows (`rope` keys only)
    keys_model: str


def synthetic_pause(candidates: int, active: int, tokens: int, keys_model: str, shape: Shape = QWEN_7B, reserve: int = 0,
                    device: str = "cpu", dtype: torch.dtype = torch.bfloat16, spans: int = 16, seed: int = 0) -> SyntheticPause:
    """A compressed cache of `active` kept rows and `candidates` warm rows per head, and a next turn's queries."""
    if keys_model not in KEY_MODELS:
        raise ValueError(f"keys model {keys_model!r} not in {KEY_MODELS}")
    gen = torch.Generator().manual_seed(seed)
    total, h, d = candidates + active, shape.kv_heads, shape.head_dim
    keys = torch.empty(1, h, total, d, dtype=dtype)
    mean = torch.randn(h, 1, d, generator=gen) * 2.0
    target = torch.randn(h, 1, d, generator=gen)  # the next turn's mean query direction (pre-RoPE)
    planted = torch.empty(0, 2, dtype=torch.long)
    if keys_model == "rope":
        planted = torch.randperm(total // SPAN_ROWS - 1, generator=gen)[:spans].sort().values[:, None] * SPAN_ROWS
        planted = torch.cat([planted, planted + SPAN_ROWS], dim=1)
    step = 1 << 16  # rows generated at a time: fp32 intermediates of 1M rows would need 2 GB
    for start in range(0, total, step):
        end = min(start + step, total)
        block = torch.randn(h, end - start, d, generator=gen)
        if keys_model == "rope":
            positions = torch.arange(start, end)
            inside = ((positions[:, None] >= planted[:, 0]) & (positions[:, None] < planted[:, 1])).any(-1)
            block = rope(block + mean + 3.0 * inside[None, :, None] * target, positions)
        keys[0, :, start:end] = block.to(dtype)
    keep = torch.stack([torch.randperm(total, generator=gen)[:active].sort().values for _ in range(h)])
    one = TieredCache.from_tensors([keys.to(device)], [keys.to(device)], warm_precision="model")
    del keys
    one.compress([keep.to(device)], reserve=reserve)
    cache = _alias_layers(one, shape.layers)
    queries = []
    for _ in range(shape.layers):
        pre = torch.randn(shape.query_heads, tokens, d, generator=gen)
        if keys_model == "rope":
            group = shape.query_heads // h
            pre = rope(pre + target.repeat_interleave(group, 0), torch.arange(total, total + tokens))
        queries.append(pre.to(device, dtype))
    return SyntheticPause(cache, queries, planted, keys_model)


def _alias_layers(one: TieredCache, layers: int) -> TieredCache:
    """A `layers`-layer cache whose warm storage is `one`'s single layer; active rows and present masks are copies."""
    cache = one.fork()
    active, warm = cache.active, cache.warm
    active._k = [one.active._k[0].clone() for _ in range(layers)]
    active._v = [one.active._v[0].clone() for _ in range(layers)]
    active._p = [one.active._p[0].clone() for _ in range(layers)]
    active._shared = False
    warm._k, warm._v, warm._p = [one.warm._k[0]] * layers, [one.warm._v[0]] * layers, [one.warm._p[0]] * layers
    warm._present = [one.warm._present[0].clone() for _ in range(layers)]
    warm._owns_present = True
    return cache


def page_digest(cache: TieredCache, page_rows: int) -> PageDigest:
    """The digest the warm tier would have kept at this page size (one eviction: pages from slot 0), aliased like the storage."""
    digest = PageDigest(1, page_rows)
    digest.add(0, cache.warm._k[0].data.to(cache.device), 0)
    layers = cache.num_layers
    digest._min, digest._max = digest._min * layers, digest._max * layers
    digest._start, digest._rows = digest._start * layers, digest._rows * layers
    return digest


def warm_key_bytes(cache: TieredCache) -> int:
    """Bytes of every layer's warm keys (what the exact signal must read), counted per layer as if not aliased."""
    k = cache.warm._k[0].data
    return cache.num_layers * k.numel() * k.element_size()


def promote_bytes(shape: Shape, k: int, dtype: torch.dtype = torch.bfloat16) -> int:
    """Keys and values of K rows in every layer and KV head: what a promotion must move."""
    return 2 * shape.layers * shape.kv_heads * shape.head_dim * k * dtype.itemsize


def pages(candidates: int, page_rows: int) -> int:
    return math.ceil(candidates / page_rows)
