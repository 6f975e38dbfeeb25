"""The reference's SnapKV-like rule (REFERENCE.md section 1), kept to reproduce its protocol.

It differs from SnapKV in three ways, each on purpose: the observation window's post-RoPE
*keys* stand in for its queries, there is no pooling, and the scores are averaged over every
layer and KV head into one ranking that all of them share. On the embedded model this
matters for the repair frontier: proper SnapKV finds every needle, so the rows it ranks just
past B are the next turn's needles and Matched rises with K; this rule keeps rows whose keys
look like the turn-1 answer's, so its next rows are hardly likelier than any other to hold a
turn-2 needle (1.3-1.6x, against SnapKV's 3.9x) and Matched stays flat, as in the reference
(docs/repair.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from idlekv.retention.attention_stats import window_attention
from idlekv.retention.base import RetentionInputs, RetentionRule, context_scores


@dataclass
class ReferenceSnapKV(RetentionRule):
    aggregate: str = "max"  # over the window's rows: max | mean

    name = "snapkv_reference"
    needs_window = True

    def __post_init__(self):
        if self.aggregate not in ("max", "mean"):
            raise ValueError(f"aggregate {self.aggregate!r} not in ('max', 'mean')")

    def score(self, inputs: RetentionInputs) -> torch.Tensor:
        per_layer = [self._layer(inputs, layer) for layer in range(inputs.num_layers)]
        shared = torch.stack(per_layer).clamp_min(0.0).mean(dim=(0, 1))
        return shared.expand(inputs.num_layers, per_layer[0].shape[0], -1).contiguous()

    def _layer(self, inputs: RetentionInputs, layer: int) -> torch.Tensor:
        keys, positions = inputs.keys[layer], inputs.positions[layer]
        # The window (the turn-1 answer or question) lies in the tail, which every head holds whole.
        in_window = torch.isin(positions[0], inputs.window_positions.to(positions.device))
        if not bool(in_window.any()):
            raise ValueError("the observation window has no rows in the cache")
        attn = window_attention(keys[:, in_window], keys, positions, positions[0, in_window])
        reduced = attn.amax(dim=1) if self.aggregate == "max" else attn.mean(dim=1)
        return context_scores(reduced, positions, inputs.context_length)
