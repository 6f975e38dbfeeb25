"""Scissorhands (Liu et al., 2023, https://arxiv.org/abs/2305.17118): the persistence of
importance. A row is important to a query when it gets more than the uniform share of that
query's attention (1 / rows the query sees); over a history window of the last `history`
queries seen (query-aware: the question's last), rows counted important most often are kept."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from idlekv.retention.attention_stats import attention_chunks, group_mean
from idlekv.retention.base import RetentionInputs, RetentionRule, context_scores


@dataclass
class Scissorhands(RetentionRule):
    history: int = 256  # the last prefill queries that vote
    chunk: int = 256

    name = "scissorhands"
    needs_prefill_queries = True

    def score(self, inputs: RetentionInputs) -> torch.Tensor:
        per_layer = []
        for layer in range(inputs.num_layers):
            keys, positions = inputs.keys[layer], inputs.positions[layer]
            seen = inputs.prefill_queries[layer].shape[1]  # the context's queries, then (query-aware) the question's
            queries = inputs.prefill_queries[layer][:, -self.history :]
            q_pos = torch.arange(seen - queries.shape[1], seen)
            votes = torch.zeros(queries.shape[0], keys.shape[1], device=keys.device)
            for attn, visible in attention_chunks(queries, keys, positions, q_pos, self.chunk):
                uniform = 1.0 / visible.sum(dim=-1, keepdim=True).clamp_min(1)
                votes += ((attn > uniform) & visible).sum(dim=1)
            per_layer.append(context_scores(group_mean(votes, keys.shape[0]), positions, inputs.context_length))
        return torch.stack(per_layer)
