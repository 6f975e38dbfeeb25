"""KVMirror's hybrid policy (the seed repository, REFERENCE.md section 2): sinks + a recent
window + the top rows by 0.75 x attention + 0.25 x novelty.

KVMirror never defines novelty beyond its name; here it is KeyDiff's dissimilarity to the
mean key, and attention is the observation window's attention mass; both are scaled to
[0, 1] per head before mixing, so the weights mean what they say.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from idlekv.retention.attention_stats import window_scores
from idlekv.retention.base import RetentionInputs, RetentionRule, context_scores
from idlekv.retention.keydiff import key_novelty


def unit_scale(x: torch.Tensor) -> torch.Tensor:
    """Scale each head's finite scores to [0, 1]."""
    finite = torch.isfinite(x)
    lo = x.masked_fill(~finite, float("inf")).amin(dim=-1, keepdim=True)
    hi = x.masked_fill(~finite, float("-inf")).amax(dim=-1, keepdim=True)
    return ((x - lo) / (hi - lo).clamp_min(1e-12)).masked_fill(~finite, 0.0)


@dataclass
class KVMirrorHybrid(RetentionRule):
    sinks: int = 16
    recent: int = 128
    attention_weight: float = 0.75
    novelty_weight: float = 0.25

    name = "kvmirror_hybrid"
    needs_window = True

    def score(self, inputs: RetentionInputs) -> torch.Tensor:
        per_layer = []
        for layer in range(inputs.num_layers):
            keys, positions = inputs.keys[layer], inputs.positions[layer]
            attention = window_scores(inputs, layer, lambda a: a.sum(dim=1))
            novelty = context_scores(key_novelty(keys, positions, inputs.context_length, anchor="raw"), positions, inputs.context_length)
            per_layer.append(self.attention_weight * unit_scale(attention) + self.novelty_weight * unit_scale(novelty))
        return torch.stack(per_layer)
