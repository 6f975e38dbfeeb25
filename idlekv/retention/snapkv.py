"""SnapKV (Li et al., 2024, https://arxiv.org/abs/2404.14469): keep the rows an observation
window attends to.

Done as the paper does and the reference did not: real post-RoPE queries of the window,
softmax over every key the window sees (causal inside the window), aggregated over the
window (max or mean), smoothed by a 1-D pooling kernel along positions, per KV head (the
query heads of a GQA group averaged).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from idlekv.retention.attention_stats import group_mean, pool_positions, window_attention
from idlekv.retention.base import RetentionInputs, RetentionRule, context_scores


@dataclass
class SnapKV(RetentionRule):
    kernel: int = 5  # pooling kernel along positions (odd)
    aggregate: str = "max"  # over the window's queries: max | mean
    pooling: str = "max"  # max | avg

    name = "snapkv"
    needs_window = True

    def score(self, inputs: RetentionInputs) -> torch.Tensor:
        per_layer = []
        for layer in range(inputs.num_layers):
            keys, positions = inputs.keys[layer], inputs.positions[layer]
            attn = window_attention(inputs.window_queries[layer], keys, positions, inputs.window_positions)
            attn = attn.amax(dim=1) if self.aggregate == "max" else attn.mean(dim=1)  # (query_heads, rows)
            attn = group_mean(attn, keys.shape[0])  # GQA: average the group
            scores = context_scores(attn, positions, inputs.context_length).clamp_min(0.0)
            per_layer.append(self._pool(scores))
        return torch.stack(per_layer)

    def _pool(self, scores: torch.Tensor) -> torch.Tensor:
        return pool_positions(scores, self.kernel, self.pooling)
