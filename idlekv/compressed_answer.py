"""Answer a question over a cache compressed by a retention rule (phase02's unit of work).

Query-aware (kvpress's `query_aware`): the question is prefilled with the context and its
queries are the rule's observation window; the context rows are compressed, the question's
rows stay, and its last token is fed again over the compressed cache so the first answer
token never sees an evicted row. Query-agnostic: only the context is prefilled, the window is
its last `agnostic_window` tokens, and the question comes after compression. One prefill
serves every rule and budget: each compresses a fork of it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import nullcontext

import torch

from idlekv.attention import capture_queries
from idlekv.cache import MixedPrecisionCache, TieredCache
from idlekv.cache.row_mask import row_masks
from idlekv.generation import run_turn, stop_token_ids
from idlekv.models import returned_cache
from idlekv.retention.base import RetentionInputs, RetentionRule
from ruler.metrics import needle_recall
from ruler.render import encode, render
from ruler.sample import Sample


class CompressedQuestion:
    """One sample's prefill, ready to be compressed by any rule at any budget."""

    @torch.no_grad()
    def __init__(self, model, tokenizer, sample: Sample, query_aware: bool, agnostic_window: int = 16,
                 max_new_tokens: int = 32, stop_ids: set[int] | None = None, prefill_queries: bool = True):
        self.model, self.tokenizer, self.sample, self.max_new_tokens = model, tokenizer, sample, max_new_tokens
        self.stop_ids = stop_token_ids(tokenizer) if stop_ids is None else stop_ids
        rendered = render(sample, tokenizer)
        prompt, question = encode(tokenizer, rendered.prompt_text), encode(tokenizer, rendered.turn_texts[0])
        self.context_tokens = n = len(prompt)
        head = prompt + (question[:-1] if query_aware else [])
        device = next(model.parameters()).device
        window = slice(n, len(head)) if query_aware and len(head) > n else slice(max(0, n - agnostic_window), n)
        # Every prefill query only for rules that read them (H2O, Scissorhands): at long
        # contexts they outweigh the cache; otherwise just the window's, which end the prefill.
        last_n = None if prefill_queries else len(head) - window.start
        with capture_queries(model, last_n=last_n) as cap:
            out = model(torch.tensor([head], device=device), use_cache=True, logits_to_keep=1)
        self.root = TieredCache.from_hf(returned_cache(out))
        layers = self.root.num_layers
        queries = [cap.queries[layer][0] for layer in range(layers)]
        offset = 0 if prefill_queries else window.start
        self.inputs = RetentionInputs([self.root.active.keys(i)[0] for i in range(layers)],
                                      [self.root.active.positions(i)[0] for i in range(layers)],
                                      [q[:, window.start - offset : window.stop - offset] for q in queries], torch.arange(len(head))[window], n,
                                      queries if prefill_queries else None)  # query-aware: the question's queries too
        self.rest = question[-1:] if query_aware else question
        self._shares_of: dict[int, torch.Tensor] = {}  # tri-state rules' layer shares, by rule

    @torch.no_grad()
    def answers(self, rule: RetentionRule, budgets: Sequence[int]) -> list[dict]:
        """One row per budget (context rows kept per KV head): accuracy, answer, bytes, timings."""
        n, root = self.context_tokens, self.root
        start = time.perf_counter()
        scores = rule.score(self.inputs)
        score_s = time.perf_counter() - start
        rows = []
        shares = self._shares(rule) if getattr(rule, "tri_state", False) else None
        for budget in budgets:
            cache = root.fork()
            start = time.perf_counter()
            plan = rule.plan(self.inputs, budget, scores, shares)
            keep, valid = plan.keep, plan.valid  # ragged budgets: padded to the widest, the padding masked
            tail = torch.arange(n, root.rows, device=keep.device).expand(keep.shape[1], -1)
            cache.compress([torch.cat([keep[layer], tail], dim=-1) for layer in range(root.num_layers)])
            if plan.tri_state:  # the middle tier is stored quantized; the question's rows stay full
                full = [torch.cat([plan.full[layer], torch.ones_like(tail, dtype=torch.bool)], dim=-1) for layer in range(root.num_layers)]
                cache = MixedPrecisionCache.from_tiered(cache, full, plan.precision)
            compress_s = time.perf_counter() - start
            # Measured from the tensors held, before the question's rows join.
            active_bytes, allocated = self._bytes(cache, len(tail[0]))
            if valid is not None:  # the rows the budgets asked for; the padding is allocated only
                active_bytes = allocated * int(valid.sum()) // valid.numel()
            masks = nullcontext() if valid is None else row_masks(self.model, [torch.cat([valid[layer], torch.ones_like(tail, dtype=torch.bool)], dim=-1)
                                                                                for layer in range(root.num_layers)])
            start = time.perf_counter()
            with masks:
                answer = self.tokenizer.decode(run_turn(self.model, cache, self.rest, self.max_new_tokens, self.stop_ids))
            found = needle_recall(answer, self.sample.turns[0].outputs)
            rows.append({"budget": int(budget), "context_tokens": n, "accuracy": sum(found) / max(1, len(found)), "answer": answer,
                         "active_bytes": active_bytes, "active_allocated_bytes": allocated,
                         "score_s": round(score_s, 5), "compress_s": round(compress_s, 5), "answer_s": round(time.perf_counter() - start, 5)})
        return rows

    def _bytes(self, cache, tail_rows: int) -> tuple[int, int]:
        """(context bytes resident, bytes allocated): the kept context rows only, tail rows
        (the question prefilled with a query-aware window) subtracted at the full row size."""
        tail = tail_rows * self._row_bytes()
        if isinstance(cache, MixedPrecisionCache):
            total = cache.bytes().total - tail
            return total, total
        sizes = cache.bytes()
        return sizes.active_kv - tail, sizes.active_allocated - tail

    def _row_bytes(self) -> int:
        """K+V bytes of one position over every (layer, KV head)."""
        k = self.root.active.keys(0)
        return 2 * self.root.num_layers * k.shape[1] * k.shape[-1] * k.element_size()

    def row_budget(self, rule: RetentionRule, fraction: float, floor: int) -> int:
        """Rows per head for `fraction` of the full context's bytes: `fraction` of the rows for an
        eviction rule; more rows for a tri-state rule whose middle tier is quantized."""
        rows = max(floor, round(fraction * self.context_tokens))
        if not getattr(rule, "tri_state", False):
            return rows
        k = self.root.active.keys(0)
        per_head_layer = rows * 2 * k.shape[-1] * k.element_size()
        return max(floor, rule.budget_for_bytes(self.inputs, per_head_layer, k.shape[-1], k.element_size(), self._shares(rule)))

    def _shares(self, rule) -> torch.Tensor:
        """A tri-state rule's per-layer full-precision shares for this prefill, computed once."""
        if id(rule) not in self._shares_of:
            self._shares_of[id(rule)] = rule.layer_shares(self.inputs)
        return self._shares_of[id(rule)]
