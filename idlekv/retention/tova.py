"""TOVA (Oren et al., 2024, https://arxiv.org/abs/2401.06104): keep the rows the current token
attends to most. Done once, at compression time, with the last query of the observation window.

As the paper: the attention averaged over all heads, so every head keeps the same rows.
`per_group: true` is a named deviation: each KV head ranks by its own GQA group's mean.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from idlekv.retention.attention_stats import window_scores
from idlekv.retention.base import RetentionInputs, RetentionRule


@dataclass
class TOVA(RetentionRule):
    per_group: bool = False  # True: each KV head by its own group's attention (not the paper's)

    name = "tova"
    needs_window = True

    def score(self, inputs: RetentionInputs) -> torch.Tensor:
        per_layer = []
        for layer in range(inputs.num_layers):
            groups = window_scores(inputs, layer, lambda a: a[:, 0], last=1)  # (kv_heads, n): each group's mean
            # groups are the same size, so the mean of the group means is the mean over every head
            per_layer.append(groups if self.per_group else groups.mean(dim=0, keepdim=True).expand_as(groups))
        return torch.stack(per_layer)
