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

from idlekv.retention.attention_stats import pool_positions, window_scores
from idlekv.retention.base import RetentionInputs, RetentionRule


@dataclass
class SnapKV(RetentionRule):
    kernel: int = 5  # pooling kernel along positions (odd)
    aggregate: str = "max"  # over the window's queries: max | mean
    pooling: str = "max"  # max | avg

    name = "snapkv"
    needs_window = True

    def score(self, inputs: RetentionInputs) -> torch.Tensor:
        reduce = (lambda a: a.amax(dim=1)) if self.aggregate == "max" else (lambda a: a.mean(dim=1))
        return torch.stack([self._pool(window_scores(inputs, layer, reduce).clamp_min(0.0)) for layer in range(inputs.num_layers)])

    def _pool(self, scores: torch.Tensor) -> torch.Tensor:
        return pool_positions(scores, self.kernel, self.pooling)
