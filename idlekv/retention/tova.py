"""TOVA (Oren et al., 2024, https://arxiv.org/abs/2401.06104): keep the rows the current token
attends to most. Done once, at compression time, with the last query of the observation
window, the attention averaged over the query heads of each KV head's group."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from idlekv.retention.attention_stats import window_scores
from idlekv.retention.base import RetentionInputs, RetentionRule


@dataclass
class TOVA(RetentionRule):
    name = "tova"
    needs_window = True

    def score(self, inputs: RetentionInputs) -> torch.Tensor:
        return torch.stack([window_scores(inputs, layer, lambda a: a[:, 0], last=1) for layer in range(inputs.num_layers)])
