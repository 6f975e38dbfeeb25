"""ARKV's tri-state retention (the seed; REFERENCE.md section 2): each kept row is either in
full precision or quantized, the rest evicted.

- Per layer, an "OQ" score from the observation window's attention over the prefix:
  entropy^(1/tau1) * variance^(1/tau2) * kurtosis^(1/tau3), averaged over window queries and
  heads, divided by the largest over layers: the layer's share of full-precision rows.
- Rows are ranked by a heavy-hitter score, mean + gamma * variance of the window's attention,
  pooled along positions (kernel 5) and averaged within each GQA group.
- The last `protected` context rows always stay in full precision; the middle tier is stored
  fp8 e4m3 (or int8) with one scale per row (see idlekv/cache/mixed.py).

`tri_state=False` is the same ranking with every kept row in full precision: the eviction-only
baseline that the seed's own data said matched or beat the tri-state variant. `plan_for_bytes`
turns a byte budget into a row budget, so both are compared at equal measured bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from idlekv.retention.attention_stats import pool_positions, window_attention, window_scores
from idlekv.retention.base import RetentionInputs, RetentionPlan, RetentionRule

QUANT_BYTES = {"fp8": 1, "int8": 1}
SCALE_BYTES = 4  # one float32 scale per quantized row, for keys and for values


def attention_shape(attn: torch.Tensor, visible: torch.Tensor) -> tuple[float, float, float]:
    """Mean entropy, variance and kurtosis of attention rows (..., rows) over their visible rows."""
    n = visible.sum(-1).clamp_min(1).float()
    p = attn * visible
    entropy = -(p.clamp_min(1e-12).log() * p).sum(-1)
    mean = p.sum(-1) / n
    centred = (p - mean[..., None]) * visible
    var = (centred**2).sum(-1) / n
    kurt = (centred**4).sum(-1) / n / var.clamp_min(1e-20) ** 2
    return float(entropy.mean()), float(var.mean()), float(kurt.mean())


@dataclass
class ARKV(RetentionRule):
    gamma: float = 1.0
    kernel: int = 5
    tau: tuple[float, float, float] = (1.0, 1.0, 1.0)
    protected: int = 32  # last context rows always in full precision
    precision: str = "fp8"  # fp8 | int8: the middle tier's storage
    tri_state: bool = True

    name = "arkv"
    needs_window = True

    def score(self, inputs: RetentionInputs) -> torch.Tensor:
        def heavy(attn):  # mean + gamma x variance over the window's queries
            return attn.mean(dim=1) + self.gamma * attn.var(dim=1, unbiased=False)

        return torch.stack([pool_positions(window_scores(inputs, layer, heavy).clamp_min(0.0), self.kernel, "max")
                            for layer in range(inputs.num_layers)])

    def layer_shares(self, inputs: RetentionInputs) -> torch.Tensor:
        """(layers,) each layer's share of full-precision rows: OQ / max OQ (1.0 everywhere if not tri-state)."""
        if not self.tri_state:
            return torch.ones(inputs.num_layers)
        oq = []
        for layer in range(inputs.num_layers):
            keys, positions = inputs.keys[layer], inputs.positions[layer]
            attn = window_attention(inputs.window_queries[layer], keys, positions, inputs.window_positions)
            context = (positions < inputs.context_length).repeat_interleave(attn.shape[0] // keys.shape[0], dim=0)[:, None, :]
            p = attn * context
            p = p / p.sum(-1, keepdim=True).clamp_min(1e-12)  # the distribution over the prefix
            entropy, var, kurt = attention_shape(p, context.expand_as(p))
            t1, t2, t3 = self.tau
            oq.append(entropy ** (1 / t1) * var ** (1 / t2) * kurt ** (1 / t3))
        oq = torch.tensor(oq)
        return oq / oq.max().clamp_min(1e-20)

    def plan(self, inputs: RetentionInputs, budget: int, scores: torch.Tensor | None = None,
             shares: torch.Tensor | None = None) -> RetentionPlan:
        """Rows kept and which stay full precision (all of them when not tri-state); `scores` /
        `shares` computed once may be passed in when several budgets are planned for the same inputs."""
        if inputs.window_queries is None:
            raise ValueError(f"{self.name} needs an observation window (window queries)")
        scores = self.score(inputs) if scores is None else scores
        keep = self.select(scores, budget)
        if not self.tri_state:
            return RetentionPlan(keep)
        shares = self.layer_shares(inputs) if shares is None else shares
        layers, heads, _ = keep.shape
        full = torch.zeros_like(keep, dtype=torch.bool)
        protected = keep >= inputs.context_length - self.protected
        for layer in range(layers):
            n_full = max(int(protected[layer].sum(-1).max()), min(budget, round(float(shares[layer]) * budget)))
            kept_scores = scores[layer].gather(-1, keep[layer]).masked_fill(protected[layer], float("inf"))
            top = kept_scores.argsort(dim=-1, descending=True, stable=True)[:, :n_full]
            full[layer].scatter_(-1, top, True)
        return RetentionPlan(keep, full=full, precision=self.precision)

    def budget_for_bytes(self, inputs: RetentionInputs, bytes_per_head_layer: float, head_dim: int, element_size: int,
                         shares: torch.Tensor | None = None) -> int:
        """Rows per head whose K+V bytes, averaged over layers, fit `bytes_per_head_layer`."""
        full_row = 2 * head_dim * element_size
        quant_row = 2 * (head_dim * QUANT_BYTES.get(self.precision, element_size) + SCALE_BYTES)
        shares = self.layer_shares(inputs) if shares is None else shares
        per_row = float((shares * full_row + (1 - shares) * quant_row).mean())
        return min(inputs.context_length, int(bytes_per_head_layer // per_row))
