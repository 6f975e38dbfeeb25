"""PyramidKV (Cai et al., 2024, https://arxiv.org/abs/2406.02069): SnapKV's scores with a
budget per layer that shrinks linearly with depth (lower layers attend broadly, upper layers
narrowly), averaging to the requested budget.

As the paper's code: the bottom layer gets 2 x free - free / beta rows beyond the protected
ones and the top layer free / beta; when the bottom layer's share exceeds the context, it is
capped there and the line pivots, the excess moving up (the top layer gets 2 x free - cap).

Budgets are ragged across layers; the cache holds them padded to the largest with the padding
masked (idlekv/cache/row_mask.py), and reports both the kept and the allocated bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from idlekv.retention.snapkv import SnapKV


@dataclass
class PyramidKV(SnapKV):
    beta: float = 20.0  # the top layer keeps budget / beta of the non-protected rows (the paper's beta)

    name = "pyramidkv"

    def head_budgets(self, scores: torch.Tensor, budget: int) -> torch.Tensor:
        """(layers, kv_heads) rows per head: linear from the bottom layer down to the top one."""
        layers, heads, n = scores.shape
        self.check_budget(budget, n)
        protected = min(self.sinks, n) + min(self.recent, max(0, n - self.sinks))
        free, cap = budget - protected, n - protected
        low = free / self.beta
        high = 2 * free - low
        if high > cap:  # the bottom layer cannot hold more than the context: cap it, raise the top
            high, low = cap, 2 * free - cap
        per_layer = torch.linspace(high, low, layers).floor().long() if layers > 1 else torch.tensor([free])
        remainder = free * layers - int(per_layer.sum())  # rounding: one more row each, from the top layer down
        for layer in range(layers - 1, -1, -1):
            if remainder == 0:
                break
            if per_layer[layer] < cap:
                per_layer[layer] += 1
                remainder -= 1
        return (per_layer + protected)[:, None].expand(layers, heads).clone()
