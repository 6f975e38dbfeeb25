"""StreamingLLM (Xiao et al., 2023, https://arxiv.org/abs/2309.17453): attention sinks plus
the most recent rows. With a budget larger than sinks + recent, the extra rows are the next
most recent ones."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from idlekv.retention.base import RetentionInputs, RetentionRule


@dataclass
class StreamingLLM(RetentionRule):
    name = "streaming_llm"

    def score(self, inputs: RetentionInputs) -> torch.Tensor:
        recency = torch.arange(inputs.context_length, dtype=torch.float32)
        heads = inputs.keys[0].shape[0]
        return recency.expand(inputs.num_layers, heads, -1).clone()
