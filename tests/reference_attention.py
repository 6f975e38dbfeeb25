"""A reference attention for tests: eager attention over the FULL cache, with chosen
(layer, kv_head, cache row) entries masked out. It is what a pruned cache must equal."""

from __future__ import annotations

from contextlib import contextmanager

import torch

_MASKS: dict[int, torch.Tensor] = {}  # layer -> (kv_heads, cache_rows) bool, True = masked out
NAME = "idlekv_test_headmask"


def headmask_attention(module, query, key, value, attention_mask, scaling=None, **kwargs):
    b, hq, q, d = query.shape
    hkv, kv = key.shape[1], key.shape[2]
    group = hq // hkv
    k = key.repeat_interleave(group, dim=1)
    v = value.repeat_interleave(group, dim=1)
    logits = query @ k.transpose(-1, -2) * (scaling if scaling is not None else d**-0.5)
    q_pos = torch.arange(kv - q, kv)
    allowed = torch.arange(kv)[None, :] <= q_pos[:, None]  # causal over cache + new tokens
    allowed = allowed.expand(hq, q, kv).clone()
    masked = _MASKS.get(module.layer_idx)
    if masked is not None:
        rows = masked.shape[-1]
        allowed[:, :, :rows] &= ~masked.repeat_interleave(group, dim=0)[:, None, :]
    logits = logits.masked_fill(~allowed, float("-inf"))
    out = torch.softmax(logits, dim=-1) @ v
    return out.transpose(1, 2).contiguous(), None


@contextmanager
def masked_rows(model, masks: dict[int, torch.Tensor]):
    from transformers import AttentionInterface

    AttentionInterface.register(NAME, headmask_attention)
    original = model.config._attn_implementation
    _MASKS.clear()
    _MASKS.update(masks)
    model.config._attn_implementation = NAME
    try:
        yield
    finally:
        model.config._attn_implementation = original
        _MASKS.clear()
