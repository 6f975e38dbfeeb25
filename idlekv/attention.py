"""Capture post-RoPE query states (and, on request, attention weights) during a forward.

The model keeps its own attention kernel (sdpa by default): a wrapper registered with
transformers' AttentionInterface records the queries it is handed, which are already
rotated, and then calls the original kernel. A mask function is registered under the
same name; without it transformers would hand the wrapper no mask at all.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

_ACTIVE: list["QueryCapture"] = []
_REGISTERED: set[str] = set()


@dataclass
class QueryCapture:
    """What one forward recorded, per layer index.

    queries[layer]: (batch, query_heads, q, head_dim), post-RoPE, detached.
    attentions[layer]: (batch, query_heads, q, kv) softmax weights, when asked for.
    """

    layers: set[int] | None = None
    attentions_wanted: bool = False
    last_n: int | None = None
    accumulate: bool = False  # concatenate over forwards (e.g. the steps of a decode) instead of replacing
    queries: dict[int, torch.Tensor] = field(default_factory=dict)
    attentions: dict[int, torch.Tensor] = field(default_factory=dict)

    def wants(self, layer: int) -> bool:
        return self.layers is None or layer in self.layers

    def record(self, module, query, key, attention_mask, scaling) -> None:
        layer = module.layer_idx
        if not self.wants(layer):
            return
        q = query.detach()
        if self.last_n is not None:
            q = q[:, :, -self.last_n :]
        if self.accumulate and layer in self.queries:
            q = torch.cat([self.queries[layer], q], dim=2)
        self.queries[layer] = q
        if self.attentions_wanted:
            self.attentions[layer] = attention_weights(q, key.detach(), attention_mask, scaling, query.shape[-2])


def attention_weights(query, key, attention_mask, scaling, full_q_len: int) -> torch.Tensor:
    """Softmax(q k^T * scaling + mask) with GQA grouping, for the (last) queries given."""
    group = query.shape[1] // key.shape[1]
    key = key.repeat_interleave(group, dim=1)
    logits = torch.matmul(query.float(), key.float().transpose(-1, -2)) * scaling
    q_len, kv_len = query.shape[-2], key.shape[-2]
    if attention_mask is None:
        # Plain causal: query i (of the full_q_len new tokens) sees cache + new tokens up to itself.
        q_pos = torch.arange(full_q_len - q_len, full_q_len, device=query.device) + (kv_len - full_q_len)
        allowed = torch.arange(kv_len, device=query.device)[None, :] <= q_pos[:, None]
        logits = logits.masked_fill(~allowed, float("-inf"))
    else:
        mask = attention_mask[..., -q_len:, :kv_len]
        logits = logits.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else logits + mask.float()
    return torch.softmax(logits, dim=-1)


def original_attention(name: str, module):
    """The attention function transformers would call for implementation `name`."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    if name == "eager":
        return sys.modules[type(module).__module__].eager_attention_forward
    return ALL_ATTENTION_FUNCTIONS[name]


def register_wrapper(prefix: str, original: str, make_wrapper) -> str:
    """Register `make_wrapper(original)` as attention implementation "<prefix><original>" (once),
    with the original's mask function (without one transformers hands the wrapper no mask)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    name = f"{prefix}{original}"
    if name not in _REGISTERED:
        AttentionInterface.register(name, make_wrapper(original))
        AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[original])
        _REGISTERED.add(name)
    return name


def _capturing(original: str):
    def capturing_attention(module, query, key, value, attention_mask, scaling=None, **kwargs):
        scale = scaling if scaling is not None else query.shape[-1] ** -0.5
        for capture in _ACTIVE:
            capture.record(module, query, key, attention_mask, scale)
        return original_attention(original, module)(module, query, key, value, attention_mask, scaling=scaling, **kwargs)

    return capturing_attention


def set_implementation(model, name: str) -> None:
    # Attention modules read config._attn_implementation at call time; every sub-config
    # shares the model's text config, so setting it on the config switches all layers.
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "_attn_implementation"):
            config._attn_implementation = name


@contextmanager
def capture_queries(
    model, layers: Iterable[int] | None = None, attentions: bool = False, last_n: int | None = None, accumulate: bool = False
):
    """Within the block, each forward of `model` records post-RoPE queries per layer.

    `last_n` keeps only the last n query tokens (e.g. an observation window), so capture
    memory does not grow with the prompt. `attentions=True` also records softmax weights,
    computed from the recorded queries, while the model itself keeps its own kernel.
    """
    original = model.config._attn_implementation
    if original.startswith("idlekv_capture_"):
        original = original.removeprefix("idlekv_capture_")
    name = register_wrapper("idlekv_capture_", original, _capturing)
    if accumulate and attentions:
        raise ValueError("attention weights cannot be accumulated over forwards of different cache sizes")
    capture = QueryCapture(set(layers) if layers is not None else None, attentions, last_n, accumulate)
    set_implementation(model, name)
    _ACTIVE.append(capture)
    try:
        yield capture
    finally:
        _ACTIVE.remove(capture)
        if not any(True for _ in _ACTIVE):
            set_implementation(model, original)
