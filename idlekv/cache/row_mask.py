"""Ragged budgets on transformers' equal-length cache: pad, then mask per (layer, KV head).

PyramidKV gives each layer its own budget and AdaKV each head; a DynamicCache needs the same
row count everywhere. Each (layer, head) therefore keeps its own rows plus padding rows (the
next-ranked ones, real rows of the cache), and an attention wrapper hides the padding from
every query. Padding is memory that is allocated: report it (`allocated`) beside the rows
the budgets asked for (`kept`).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from idlekv.attention import original_attention, register_wrapper, set_implementation

_MASKS: dict[int, torch.Tensor] = {}  # layer -> (kv_heads, rows) bool, True = visible


def padded_selection(ranked: torch.Tensor, budgets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """From (layers, heads, n) positions ranked best first and (layers, heads) budgets, the
    (layers, heads, W) positions to hold (ascending; W = the largest budget) and which are kept."""
    width = int(budgets.max())
    top = ranked[..., :width]
    rank = torch.arange(width).expand_as(top)
    valid = rank < budgets[..., None]
    order = top.argsort(dim=-1)
    return top.gather(-1, order), valid.gather(-1, order)


def _masked_attention(original: str):
    def attention(module, query, key, value, attention_mask, scaling=None, **kwargs):
        visible = _MASKS.get(module.layer_idx)
        if visible is not None:
            b, hq, q, kv = query.shape[0], query.shape[1], query.shape[2], key.shape[2]
            if attention_mask is None:  # plain causal over cache + new tokens
                allowed = torch.arange(kv, device=query.device)[None, :] <= torch.arange(kv - q, kv, device=query.device)[:, None]
                allowed = allowed[None, None].expand(b, 1, q, kv)
            else:
                mask = attention_mask[:, :, -q:, :kv]
                allowed = mask if mask.dtype == torch.bool else mask == 0
            rows = torch.ones(visible.shape[0], kv, dtype=torch.bool, device=query.device)
            rows[:, : visible.shape[1]] = visible.to(query.device)  # rows appended since stay visible
            rows = rows.repeat_interleave(hq // visible.shape[0], dim=0)
            attention_mask = allowed & rows[None, :, None, :]
        return original_attention(original, module)(module, query, key, value, attention_mask, scaling=scaling, **kwargs)

    return attention


@contextmanager
def row_masks(model, visible: list[torch.Tensor]):
    """Within the block, layer l's attention sees only the cache rows where visible[l] (kv_heads,
    rows) is True (rows beyond its width, e.g. a new turn's, are visible)."""
    original = model.config._attn_implementation
    name = register_wrapper("idlekv_rowmask_", original, _masked_attention)
    _MASKS.clear()
    _MASKS.update({layer: m for layer, m in enumerate(visible)})
    set_implementation(model, name)
    try:
        yield
    finally:
        _MASKS.clear()
        set_implementation(model, original)
