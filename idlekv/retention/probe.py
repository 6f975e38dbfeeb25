"""Learned relevance (ATSKV's idea, done for real): a small per-layer probe that predicts, from
cheap features of a context row, whether a LATER question will need it.

Features per (layer, KV head, row): the post-RoPE key itself (a projection of the row's hidden
state), its norm, its novelty (1 - cosine to the head's mean key), the row's relative position
and recency, and the attention the observation window pays it (max and mean, log scale).
Labels come from the model: the rows holding 90% of the attention that a later turn's question
and answer pay to the context (see trace.py). One logistic regression per layer, shared by the
layer's heads. Rows are kept by a threshold controller: per head, the threshold is the score
quantile that leaves exactly the budget (ATSKV's quantile thresholds, made to meet a budget).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from idlekv.retention.attention_stats import group_mean, window_attention
from idlekv.retention.base import RetentionInputs, RetentionRule, context_scores
from idlekv.retention.keydiff import key_novelty

STAT_FEATURES = ("key_norm", "novelty", "position", "recency", "log_window_max", "log_window_mean")


def row_features(inputs: RetentionInputs, layer: int) -> torch.Tensor:
    """(kv_heads, context_length, head_dim + 6) features of the context rows of one layer."""
    keys, positions, n = inputs.keys[layer].float(), inputs.positions[layer], inputs.context_length
    order = positions.argsort(dim=-1)
    inside = positions.gather(-1, order) < n
    pick = order[:, : int(inside[0].sum())]  # context rows in position order
    k = keys.gather(1, pick[..., None].expand(-1, -1, keys.shape[-1]))
    pos = positions.gather(-1, pick).float()
    attn = window_attention(inputs.window_queries[layer], keys, positions, inputs.window_positions)
    wmax = context_scores(group_mean(attn.amax(dim=1), keys.shape[0]), positions, n)
    wmean = context_scores(group_mean(attn.mean(dim=1), keys.shape[0]), positions, n)
    novelty = key_novelty(keys, positions, n, anchor="raw").gather(-1, pick)  # the feature the shipped probe was trained on
    stats = torch.stack([k.norm(dim=-1), novelty, pos / max(1, n - 1), torch.log1p(n - 1 - pos),
                         torch.log(wmax.clamp_min(1e-8)), torch.log(wmean.clamp_min(1e-8))], dim=-1)
    return torch.cat([k, stats], dim=-1)


@dataclass
class ProbeWeights:
    """Per-layer logistic regressions over standardised features."""

    weight: torch.Tensor  # (layers, features)
    bias: torch.Tensor  # (layers,)
    mean: torch.Tensor  # (layers, features)
    std: torch.Tensor  # (layers, features)
    record: dict = field(default_factory=dict)  # training curve, held-out metrics, data

    def logits(self, features: torch.Tensor, layer: int) -> torch.Tensor:
        x = (features - self.mean[layer]) / self.std[layer]
        return x @ self.weight[layer] + self.bias[layer]

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"weight": self.weight, "bias": self.bias, "mean": self.mean, "std": self.std, "record": self.record}, path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "ProbeWeights":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no relevance probe at {path}; train one with `make probe`")
        return cls(**torch.load(path, weights_only=True))


@dataclass
class LearnedRelevance(RetentionRule):
    path: str | None = None  # the saved probe (make probe writes <model>/relevance_probe.pt)

    name = "learned_relevance"
    needs_window = True
    needs_trained_probe = True

    def __post_init__(self):
        from idlekv.config import CONFIG_DIR

        if self.path is None:
            raise ValueError("learned_relevance needs the path of a trained probe (make probe)")
        path = Path(self.path)
        self.probe = ProbeWeights.load(path if path.is_absolute() else CONFIG_DIR.parent / path)

    def score(self, inputs: RetentionInputs) -> torch.Tensor:
        if self.probe.weight.shape[0] != inputs.num_layers:
            raise ValueError(f"the probe has {self.probe.weight.shape[0]} layers, the model {inputs.num_layers}")
        return torch.stack([self.probe.logits(row_features(inputs, layer), layer) for layer in range(inputs.num_layers)])

    @staticmethod
    def threshold_for_budget(scores: torch.Tensor, budget: int) -> torch.Tensor:
        """(layers, kv_heads) the per-head score threshold that keeps `budget` rows: the
        (1 - budget / rows) quantile. `select` keeps the same rows (top-k, ties by position)."""
        return scores.float().sort(dim=-1, descending=True).values[..., budget - 1]
