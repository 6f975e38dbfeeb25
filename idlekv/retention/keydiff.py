"""KeyDiff (Park et al., 2025, https://arxiv.org/abs/2504.15364): keep the most distinctive
keys, those least similar (cosine) to the head's mean key over the context. Query-agnostic."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from idlekv.retention.base import RetentionInputs, RetentionRule, context_scores


def key_novelty(keys: torch.Tensor, positions: torch.Tensor, context_length: int) -> torch.Tensor:
    """(kv_heads, rows): 1 - cosine similarity of each key to the mean key of the context rows."""
    k = keys.float()
    inside = (positions < context_length).unsqueeze(-1)
    mean = (k * inside).sum(dim=1, keepdim=True) / inside.sum(dim=1, keepdim=True).clamp_min(1)
    return 1.0 - torch.nn.functional.cosine_similarity(k, mean, dim=-1)


@dataclass
class KeyDiff(RetentionRule):
    name = "keydiff"

    def score(self, inputs: RetentionInputs) -> torch.Tensor:
        return torch.stack([context_scores(key_novelty(inputs.keys[layer], inputs.positions[layer], inputs.context_length),
                                           inputs.positions[layer], inputs.context_length)
                            for layer in range(inputs.num_layers)])
