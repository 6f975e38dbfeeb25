"""PyramidKV (Cai et al., 2024, https://arxiv.org/abs/2406.02069): SnapKV's scores with a
budget per layer that shrinks linearly with depth (lower layers attend broadly, upper layers
narrowly), averaging to the requested budget.

Budgets are ragged across layers; the cache holds them padded to the largest with the padding
masked (idlekv/cache/row_mask.py), and reports both the kept and the allocated bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from idlekv.retention.base import BudgetError
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
        free = budget - protected
        low = free / self.beta
        high = 2 * free - low
        per_layer = torch.linspace(high, low, layers) if layers > 1 else torch.tensor([float(free)])
        per_layer = per_layer.floor().long()
        per_layer[0] += free * layers - int(per_layer.sum())  # the rounding remainder, so the mean is exact
        per_layer = (per_layer + protected).clamp(max=n)
        if int(per_layer.sum()) != budget * layers:
            raise BudgetError(f"pyramid budgets {per_layer.tolist()} cannot average {budget} within {n} rows")
        return per_layer[:, None].expand(layers, heads).clone()
