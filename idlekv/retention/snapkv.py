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

from idlekv.retention.base import RetentionInputs, RetentionRule, context_scores


def window_attention(queries: torch.Tensor, keys: torch.Tensor, key_positions: torch.Tensor, query_positions: torch.Tensor) -> torch.Tensor:
    """Softmax attention of window queries over a head's rows.

    queries (query_heads, w, d); keys (kv_heads, rows, d); key_positions (kv_heads, rows);
    query_positions (w,). Returns (query_heads, w, rows); a query sees rows at positions <= its own.
    """
    group = queries.shape[0] // keys.shape[0]
    k = keys.repeat_interleave(group, dim=0).float()
    logits = queries.float() @ k.transpose(-1, -2) * queries.shape[-1] ** -0.5
    pos = key_positions.repeat_interleave(group, dim=0)
    visible = pos[:, None, :] <= query_positions.to(pos.device)[None, :, None]
    return torch.softmax(logits.masked_fill(~visible, float("-inf")), dim=-1)


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
            heads = keys.shape[0]
            attn = attn.view(heads, -1, attn.shape[-1]).mean(dim=1)  # GQA: average the group
            scores = context_scores(attn, positions, inputs.context_length).clamp_min(0.0)
            per_layer.append(self._pool(scores))
        return torch.stack(per_layer)

    def _pool(self, scores: torch.Tensor) -> torch.Tensor:
        if self.kernel <= 1:
            return scores
        x, pad = scores[:, None, :], self.kernel // 2
        if self.pooling == "max":
            return torch.nn.functional.max_pool1d(x, self.kernel, stride=1, padding=pad)[:, 0]
        return torch.nn.functional.avg_pool1d(x, self.kernel, stride=1, padding=pad, count_include_pad=False)[:, 0]
