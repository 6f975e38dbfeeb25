"""Keep every row (the no-compression baseline); any budget below the context is refused."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from idlekv.retention.base import BudgetError, RetentionInputs, RetentionRule


@dataclass
class KeepAll(RetentionRule):
    sinks: int = 0
    recent: int = 0
    name = "keep_all"

    def score(self, inputs: RetentionInputs) -> torch.Tensor:
        return torch.zeros(inputs.num_layers, inputs.keys[0].shape[0], inputs.context_length)

    def select(self, scores: torch.Tensor, budget: int) -> torch.Tensor:
        if budget != scores.shape[-1]:
            raise BudgetError(f"keep_all keeps all {scores.shape[-1]} context rows; budget {budget} was asked")
        return super().select(scores, budget)
