"""H2O (Zhang et al., 2023, https://arxiv.org/abs/2306.14048): keep the heavy hitters, the rows
with the most attention accumulated over every query seen (the prefill's, and query-aware the
question's, as decoding accumulates them), plus a recent window.

The accumulated sum favours early rows (they are seen by more queries); that bias is the
paper's, so it is kept; `normalize=True` divides by the number of queries that saw each row.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from idlekv.retention.attention_stats import attention_chunks, group_mean
from idlekv.retention.base import RetentionInputs, RetentionRule, context_scores


def accumulated_attention(inputs: RetentionInputs, layer: int, chunk: int, normalize: bool) -> torch.Tensor:
    """(kv_heads, context_length): attention each context row received from every query seen."""
    keys, positions = inputs.keys[layer], inputs.positions[layer]
    queries = inputs.prefill_queries[layer]
    q_pos = torch.arange(queries.shape[1])
    total = torch.zeros(queries.shape[0], keys.shape[1], device=keys.device)
    seen = torch.zeros_like(total)
    for attn, visible in attention_chunks(queries, keys, positions, q_pos, chunk):
        total += attn.sum(dim=1)
        seen += visible.sum(dim=1)
    if normalize:
        total = total / seen.clamp_min(1)
    return context_scores(group_mean(total, keys.shape[0]), positions, inputs.context_length)


@dataclass
class H2O(RetentionRule):
    normalize: bool = False
    chunk: int = 256  # prefill queries per attention chunk

    name = "h2o"
    needs_prefill_queries = True

    def score(self, inputs: RetentionInputs) -> torch.Tensor:
        return torch.stack([accumulated_attention(inputs, layer, self.chunk, self.normalize) for layer in range(inputs.num_layers)])
