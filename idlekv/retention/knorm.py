"""Knorm (Devoto et al., 2024, https://arxiv.org/abs/2406.11430): keys with a low L2 norm draw
the most attention, so keep the rows of lowest key norm. Query-agnostic."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from idlekv.retention.base import RetentionInputs, RetentionRule, context_scores


@dataclass
class Knorm(RetentionRule):
    name = "knorm"

    def score(self, inputs: RetentionInputs) -> torch.Tensor:
        return torch.stack([context_scores(-inputs.keys[layer].float().norm(dim=-1), inputs.positions[layer], inputs.context_length)
                            for layer in range(inputs.num_layers)])
