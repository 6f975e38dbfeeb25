"""KeyDiff (Park et al., 2025, https://arxiv.org/abs/2504.15364): keep the most distinctive
keys, those least similar (cosine) to an anchor. Query-agnostic.

As the paper (and kvpress): the anchor is the mean of the head's unit-normalised context keys.
`anchor: raw` is a named deviation (the mean of the raw keys, this project's earlier rule).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from idlekv.retention.base import RetentionInputs, RetentionRule, context_scores

ANCHORS = ("normalized", "raw")


def key_novelty(keys: torch.Tensor, positions: torch.Tensor, context_length: int, anchor: str = "normalized") -> torch.Tensor:
    """(kv_heads, rows): 1 - cosine similarity of each key to the anchor over the context rows."""
    k = keys.float()
    inside = (positions < context_length).unsqueeze(-1)
    pooled = torch.nn.functional.normalize(k, dim=-1) if anchor == "normalized" else k
    mean = (pooled * inside).sum(dim=1, keepdim=True) / inside.sum(dim=1, keepdim=True).clamp_min(1)
    return 1.0 - torch.nn.functional.cosine_similarity(k, mean, dim=-1)


@dataclass
class KeyDiff(RetentionRule):
    anchor: str = "normalized"  # normalized (the paper) | raw

    name = "keydiff"

    def __post_init__(self):
        if self.anchor not in ANCHORS:
            raise ValueError(f"anchor {self.anchor!r} not in {ANCHORS}")

    def score(self, inputs: RetentionInputs) -> torch.Tensor:
        return torch.stack([context_scores(key_novelty(inputs.keys[layer], inputs.positions[layer], inputs.context_length, self.anchor),
                                           inputs.positions[layer], inputs.context_length)
                            for layer in range(inputs.num_layers)])
