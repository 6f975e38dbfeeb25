"""Recent window (KVMirror's `recent_window`, the simplest baseline): the most recent rows,
no sinks unless asked for."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from idlekv.retention.base import RetentionInputs, RetentionRule


@dataclass
class RecentWindow(RetentionRule):
    sinks: int = 0
    recent: int = 0  # the budget itself is the window: every kept row is a recent one

    name = "recent_window"

    def score(self, inputs: RetentionInputs) -> torch.Tensor:
        recency = torch.arange(inputs.context_length, dtype=torch.float32)
        return recency.expand(inputs.num_layers, inputs.keys[0].shape[0], -1).clone()
