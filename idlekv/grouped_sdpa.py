"""SDPA that keeps KV heads grouped for masked multi-token forwards on the CPU.

transformers repeats every key and value per query head (`repeat_kv`) whenever a forward
carries a mask and is not a single token: a resumed turn over padded, repaired caches is
exactly that case. On the CPU, torch's SDPA takes the grouping itself (`enable_gqa`) and
returns the same bits without the copy. transformers avoids it on CUDA, where a masked
`enable_gqa` falls back to the math kernel, so every other case is handed to transformers'
own SDPA unchanged.
"""

from __future__ import annotations

import torch

GROUPED_SDPA = "idlekv_grouped_sdpa"
_registered = False


def grouped_sdpa_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                           is_causal=None, **kwargs):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    groups = query.shape[1] // key.shape[1]
    takes_grouping = (query.device.type == "cpu" and groups > 1 and query.shape[2] > 1 and attention_mask is not None
                      and all(kwargs.get(k) is None for k in ("position_bias", "cache", "softcap")))
    if not takes_grouping:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    out = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, dropout_p=dropout,
                                                           scale=scaling, enable_gqa=True)
    return out.transpose(1, 2).contiguous(), None


def register_grouped_sdpa() -> str:
    """Register the implementation (once) with sdpa's mask function; returns its name."""
    global _registered
    if not _registered:
        from transformers import AttentionInterface
        from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

        AttentionInterface.register(GROUPED_SDPA, grouped_sdpa_attention)
        AttentionMaskInterface.register(GROUPED_SDPA, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])
        _registered = True
    return GROUPED_SDPA
