"""Random: uniformly random rows (the floor every rule must beat), seeded, so a run repeats."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from idlekv.retention.base import RetentionInputs, RetentionRule


@dataclass
class RandomRule(RetentionRule):
    seed: int = 0

    name = "random"

    def score(self, inputs: RetentionInputs) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.seed)
        return torch.rand(inputs.num_layers, inputs.keys[0].shape[0], inputs.context_length, generator=gen)
