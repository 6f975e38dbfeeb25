"""TOVA (Oren et al., 2024, https://arxiv.org/abs/2401.06104): keep the rows the current token
attends to most. Done once, at compression time, with the last query of the observation
window, the attention averaged over the query heads of each KV head's group."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from idlekv.retention.attention_stats import group_mean, window_attention
from idlekv.retention.base import RetentionInputs, RetentionRule, context_scores


@dataclass
class TOVA(RetentionRule):
    name = "tova"
    needs_window = True

    def score(self, inputs: RetentionInputs) -> torch.Tensor:
        per_layer = []
        for layer in range(inputs.num_layers):
            keys, positions = inputs.keys[layer], inputs.positions[layer]
            last = inputs.window_queries[layer][:, -1:]
            attn = window_attention(last, keys, positions, inputs.window_positions[-1:])[:, 0]
            per_layer.append(context_scores(group_mean(attn, keys.shape[0]), positions, inputs.context_length))
        return torch.stack(per_layer)
