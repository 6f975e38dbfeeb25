"""KVMirror's attention-trace replay, without its circular metric.

A trace records, per (layer, KV head), the attention that LATER query tokens (a later turn's
question and answer, not the window a rule ranks with) paid to each context row of the full
cache. Any rule can then be replayed offline against the trace: which rows would it keep at a
budget, and how much of the later attention, and which of the rows the later queries actually
needed, would survive. KVMirror scored a policy by the recall of the rows its own score ranked
highest (always ~1 by construction); `self_recall` is reported beside the real recall to show
the difference.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from idlekv.attention import capture_queries
from idlekv.cache import TieredCache
from idlekv.models import returned_cache, with_cache
from idlekv.retention.attention_stats import attention_chunks, group_mean
from idlekv.retention.base import RetentionInputs, RetentionRule


@dataclass
class AttentionTrace:
    """later_attention: (layers, kv_heads, context_length), the later queries' attention summed
    over those queries and averaged over each GQA group; bytes_per_row: K+V bytes of one row
    of one (layer, KV head)."""

    later_attention: torch.Tensor
    context_length: int
    later_tokens: int
    bytes_per_row: int

    def needed(self, mass: float = 0.9) -> torch.Tensor:
        """(layers, kv_heads, context_length) bool: the fewest rows per head holding `mass` of
        the later attention paid to the context (the rows the later queries need)."""
        a = self.later_attention
        order = a.argsort(dim=-1, descending=True)
        cum = a.gather(-1, order).cumsum(-1) / a.sum(-1, keepdim=True).clamp_min(1e-12)
        take = torch.cat([torch.ones_like(cum[..., :1], dtype=torch.bool), cum[..., :-1] < mass], dim=-1)
        return torch.zeros_like(a, dtype=torch.bool).scatter(-1, order, take)

    def save(self, path: str | Path) -> None:
        torch.save(asdict(self), path)

    @classmethod
    def load(cls, path: str | Path) -> "AttentionTrace":
        return cls(**torch.load(path, weights_only=True))


@torch.no_grad()
def capture_trace(model, context_ids: list[int], later_ids: list[int], window_ids: list[int] = (), agnostic_window: int = 16,
                  chunk: int = 256) -> tuple[AttentionTrace, RetentionInputs]:
    """Prefill the context, then the observation window's tokens (e.g. the turn-1 question),
    then the later tokens, all over the full cache. Returns the trace of the later tokens'
    attention to the context rows and the rule inputs: the context's keys, its prefill queries,
    and the window's queries (the last `agnostic_window` context queries without window_ids)."""
    device = next(model.parameters()).device
    with capture_queries(model) as pre:
        past = returned_cache(model(torch.tensor([context_ids], device=device), use_cache=True))
    n = len(context_ids)
    prefill = [q[0] for _, q in sorted(pre.queries.items())]
    if window_ids:
        with capture_queries(model) as win:
            past = returned_cache(model(torch.tensor([list(window_ids)], device=device), **with_cache(model, past), use_cache=True))
        window, window_positions = [q[0] for _, q in sorted(win.queries.items())], torch.arange(n, n + len(window_ids))
    else:
        w = min(agnostic_window, n)
        window, window_positions = [p[:, -w:] for p in prefill], torch.arange(n - w, n)
    cache = TieredCache.from_hf(past)  # context (+ window) rows: what the rules see
    seen = cache.rows
    with capture_queries(model) as later:
        model(torch.tensor([later_ids], device=device), **with_cache(model, past), use_cache=True)
    layers = cache.num_layers
    keys = [cache.active.keys(i)[0] for i in range(layers)]
    positions = [cache.active.positions(i)[0] for i in range(layers)]
    per_layer = []
    for layer in range(layers):
        q = later.queries[layer][0]
        every_key = past.layers[layer].keys[0]  # the later tokens' own rows too: the model's real softmax
        every_position = torch.arange(every_key.shape[1], device=every_key.device).expand(every_key.shape[0], -1)
        total = torch.zeros(q.shape[0], every_key.shape[1], device=q.device)
        for attn, _ in attention_chunks(q, every_key, every_position, torch.arange(seen, seen + q.shape[1]), chunk):
            total += attn.sum(dim=1)
        per_layer.append(group_mean(total[:, :n], every_key.shape[0]).cpu())
    inputs = RetentionInputs(keys, positions, window, window_positions, n, prefill)
    k = keys[0]
    return AttentionTrace(torch.stack(per_layer), n, len(later_ids), 2 * k.shape[-1] * k.element_size()), inputs


def replay(rule: RetentionRule, inputs: RetentionInputs, trace: AttentionTrace, budget: int, mass: float = 0.9) -> dict:
    """Replay `rule` at `budget` rows per head against the trace."""
    scores = rule.score(inputs)
    kept_positions = rule.select(scores, budget).cpu()
    kept = torch.zeros_like(trace.later_attention, dtype=torch.bool).scatter(-1, kept_positions, True)
    needed = trace.needed(mass)
    attention = trace.later_attention
    own_top = torch.zeros_like(kept).scatter(-1, scores.cpu().float().topk(budget, dim=-1).indices, True)
    heads = attention.shape[0] * attention.shape[1]
    return {
        "rule": rule.name, "budget": budget, "kept_ratio": budget / trace.context_length,
        "bytes_kept": heads * budget * trace.bytes_per_row,
        "bytes_saved": heads * (trace.context_length - budget) * trace.bytes_per_row,
        "needed_recall": float((kept & needed).sum() / needed.sum()),  # rows the later queries needed, kept
        "attention_recall": float((attention * kept).sum() / attention.sum()),  # later attention mass on kept rows
        "self_recall": float((kept & own_top).sum() / own_top.sum()),  # KVMirror's circular metric
    }
