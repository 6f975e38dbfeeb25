"""SnapKV (Li et al., 2024, https://arxiv.org/abs/2404.14469): keep the rows an observation
window attends to.

By default as the paper's code (and kvpress) does it: real post-RoPE queries of the window,
softmax over every key the window sees (causal inside the window), summed over the window's
queries, smoothed by average pooling along positions (kernel 5, the padding counted as
zeros), per KV head (the query heads of a GQA group averaged).

Named deviations: `aggregate: max|mean` over the window, `pooling: max|none`, `pad: excluded`
(the padding not counted, which inflates the rows at both edges). `snapkv_max` is this
project's earlier variant (max over the window, max pooling), kept under its own name.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from idlekv.retention.attention_stats import pool_positions, window_scores
from idlekv.retention.base import RetentionInputs, RetentionRule

REDUCTIONS = {"sum": lambda a: a.sum(dim=1), "mean": lambda a: a.mean(dim=1), "max": lambda a: a.amax(dim=1)}


@dataclass
class SnapKV(RetentionRule):
    kernel: int = 5  # pooling kernel along positions (odd)
    aggregate: str = "sum"  # over the window's queries: sum (the paper) | mean | max
    pooling: str = "avg"  # avg (the paper) | max | none
    pad: str = "counted"  # avg pooling's padding: counted (the paper, torch's default) | excluded

    name = "snapkv"
    needs_window = True

    def __post_init__(self):
        if self.aggregate not in REDUCTIONS:
            raise ValueError(f"aggregate {self.aggregate!r} not in {sorted(REDUCTIONS)}")
        if self.pad not in ("counted", "excluded"):
            raise ValueError(f"pad {self.pad!r} not in ('counted', 'excluded')")

    def score(self, inputs: RetentionInputs) -> torch.Tensor:
        reduce = REDUCTIONS[self.aggregate]
        return torch.stack([self._pool(window_scores(inputs, layer, reduce).clamp_min(0.0)) for layer in range(inputs.num_layers)])

    def _pool(self, scores: torch.Tensor) -> torch.Tensor:
        if self.pooling == "none":
            return scores
        return pool_positions(scores, self.kernel, self.pooling, count_pad=self.pad == "counted")


@dataclass
class SnapKVMax(SnapKV):
    """This project's earlier SnapKV variant: the window's max attention, max pooling."""

    aggregate: str = "max"
    pooling: str = "max"

    name = "snapkv_max"
