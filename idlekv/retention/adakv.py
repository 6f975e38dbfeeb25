"""AdaKV (Feng et al., 2024, https://arxiv.org/abs/2407.11550): SnapKV's scores with budgets
that move between the KV heads of a layer. A layer's heads keep, together, the heads x budget
rows of highest score (attention weights are comparable across heads), each head at least
`floor` x its even share (the paper's safeguard).

Budgets are ragged across heads; the cache holds them padded to the largest with the padding
masked (idlekv/cache/row_mask.py), and reports both the kept and the allocated bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from idlekv.retention.snapkv import SnapKV


@dataclass
class AdaKV(SnapKV):
    floor: float = 0.2  # each head keeps at least this share of the even budget

    name = "adakv"

    def head_budgets(self, scores: torch.Tensor, budget: int) -> torch.Tensor:
        layers, heads, n = scores.shape
        self.check_budget(budget, n)
        ranked = self.ranking(scores)
        protected = min(self.sinks, n) + min(self.recent, max(0, n - self.sinks))
        minimum = max(protected, int(self.floor * budget))
        budgets = torch.empty(layers, heads, dtype=torch.long)
        for layer in range(layers):
            # Each head's rows in rank order, with their scores; protected rows rank first.
            ordered = scores[layer].float().gather(-1, ranked[layer]).masked_fill(torch.arange(n) < protected, float("inf"))
            counts = torch.full((heads,), minimum)
            rest = ordered[:, minimum:].reshape(-1)
            owner = torch.arange(heads)[:, None].expand(-1, n - minimum).reshape(-1)
            extra = rest.argsort(descending=True, stable=True)[: heads * budget - heads * minimum]
            counts += torch.bincount(owner[extra], minlength=heads)
            budgets[layer] = counts
        return budgets
