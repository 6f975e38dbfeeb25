"""The shared part of every retention rule: sinks, a recent window, and a budget.

A rule scores the context rows of each (layer, KV head); `select` keeps the sinks (the
first rows), the recent window (the last context rows), and the best-scored rest up to the
budget. Budgets count context rows only; rows after the context (a turn's question and
answer, the "tail") are kept outside the budget by the engine.

`plan` is what every caller uses (phase02's compressed answer, the repair engine): the rows to
hold per (layer, KV head), which of them the budgets keep (ragged rules: PyramidKV per layer,
AdaKV per head, padded to the widest and the padding masked) and which stay in full precision
(tri-state rules: ARKV).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


class BudgetError(ValueError):
    pass


@dataclass
class RetentionInputs:
    """What a rule may look at, per layer (lists indexed by layer).

    keys[l]: (kv_heads, rows, head_dim) post-RoPE keys of the active rows of layer l;
    positions[l]: (kv_heads, rows) their original positions;
    window_queries[l]: (query_heads, w, head_dim) post-RoPE queries of the observation
    window (e.g. the turn-1 question or answer), or None for query-agnostic rules;
    window_positions: (w,) positions of those queries; context_length: rows at positions
    [0, context_length) are the context the budget applies to; prefill_queries[l]:
    (query_heads, t, head_dim) post-RoPE queries of every token seen so far, at positions
    [0, t): the context, then (query-aware) the question and whatever turn came after it;
    given only to rules with `needs_prefill_queries` (H2O, Scissorhands).
    """

    keys: list[torch.Tensor]
    positions: list[torch.Tensor]
    window_queries: list[torch.Tensor] | None
    window_positions: torch.Tensor | None
    context_length: int
    prefill_queries: list[torch.Tensor] | None = None

    @property
    def num_layers(self) -> int:
        return len(self.keys)


@dataclass
class RetentionPlan:
    """What a rule keeps at one budget."""

    keep: torch.Tensor  # (layers, kv_heads, width) context positions held, ascending per head
    valid: torch.Tensor | None = None  # (layers, kv_heads, width) bool: kept by the budgets (False: padding); None = all
    full: torch.Tensor | None = None  # (layers, kv_heads, width) bool: stays full precision; None = all
    precision: str | None = None  # the storage of the rows not `full` (fp8 | int8)

    @property
    def ragged(self) -> bool:
        return self.valid is not None

    @property
    def tri_state(self) -> bool:
        return self.full is not None


@dataclass
class RetentionRule:
    """Base class: subclasses implement `score`. Higher scores are kept first."""

    sinks: int = 4
    recent: int = 128

    name = "base"
    needs_window = False
    needs_prefill_queries = False
    needs_trained_probe = False  # a rule that reads weights trained beside the model (make probe)

    def score(self, inputs: RetentionInputs) -> torch.Tensor:
        """(layers, kv_heads, context_length) scores of the context rows, by position."""
        raise NotImplementedError

    def check_budget(self, budget: int, n: int) -> None:
        if budget > n:
            raise BudgetError(f"budget {budget} is larger than the context ({n} rows)")
        protected = min(self.sinks, n) + min(self.recent, max(0, n - self.sinks))
        if budget < protected:
            raise BudgetError(f"budget {budget} is smaller than the {self.sinks} sinks + {self.recent} recent rows it must keep")

    def ranking(self, scores: torch.Tensor) -> torch.Tensor:
        """(layers, kv_heads, n) context positions, best first: sinks and the recent window, then by score."""
        n = scores.shape[-1]
        forced = torch.zeros(n, dtype=torch.bool)
        forced[: self.sinks] = True
        forced[max(self.sinks, n - self.recent) :] = True
        ranked = scores.float().masked_fill(forced.to(scores.device), float("inf"))
        # A stable sort breaks ties (pooling makes many) by position, so the top B+K rows
        # always contain the top B: "Matched" at B+K is B plus the next K in this order.
        return ranked.argsort(dim=-1, descending=True, stable=True)

    def select(self, scores: torch.Tensor, budget: int) -> torch.Tensor:
        """(layers, kv_heads, budget) context positions to keep, ascending."""
        self.check_budget(budget, scores.shape[-1])
        return self.ranking(scores)[..., :budget].sort(dim=-1).values

    def head_budgets(self, scores: torch.Tensor, budget: int) -> torch.Tensor | None:
        """(layers, kv_heads) rows per head averaging `budget`, for rules whose budgets are ragged; None = `budget` everywhere."""
        return None

    @property
    def plans_uniform(self) -> bool:
        """True when every plan keeps the budget in every head at full precision (the plan is `select`)."""
        return type(self).head_budgets is RetentionRule.head_budgets and not getattr(self, "tri_state", False)

    def plan(self, inputs: RetentionInputs, budget: int, scores: torch.Tensor | None = None, shares=None) -> RetentionPlan:
        """The rows held at `budget`; `scores` computed once may be passed in when several budgets share the inputs."""
        scores = self.score(inputs) if scores is None else scores
        budgets = self.head_budgets(scores, budget)
        if budgets is None:
            return RetentionPlan(self.select(scores, budget))
        from idlekv.cache.row_mask import padded_selection

        keep, valid = padded_selection(self.ranking(scores), budgets)
        return RetentionPlan(keep, valid)

    def keep(self, inputs: RetentionInputs, budget: int) -> torch.Tensor:
        if self.needs_window and inputs.window_queries is None:
            raise ValueError(f"{self.name} needs an observation window (window queries)")
        if self.needs_prefill_queries and inputs.prefill_queries is None:
            raise ValueError(f"{self.name} needs the prefill's queries (capture them during the prefill)")
        return self.select(self.score(inputs), budget)


def context_scores(values: torch.Tensor, positions: torch.Tensor, context_length: int) -> torch.Tensor:
    """Scatter per-row values (kv_heads, rows) to per-position scores (kv_heads, context_length).

    Rows outside the context are ignored; context positions without a row score -inf.
    """
    out = torch.full((values.shape[0], context_length), float("-inf"), dtype=torch.float32, device=values.device)
    inside = positions < context_length
    heads = torch.arange(values.shape[0], device=values.device)[:, None].expand_as(positions)
    out[heads[inside], positions[inside]] = values[inside].float()
    return out
