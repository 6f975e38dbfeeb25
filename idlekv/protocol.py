"""The matched-budget repair engine: every condition of every (B, K) cell from one prefill.

Per sample: prefill the prompt once; answer turn 1 from the full cache (capturing the
observation window's queries); score the context with the turn-1 rule; per base budget B,
compress to B context rows (the turn-1 tail kept outside the budget) with the evicted rows
in the warm tier, and compute the next-turn signals once; per K, derive each condition's
cache (a fork) with B+K context rows. Then resume turn 2 for the caches of every (B, K) as
one batch (split only past `resume_batch_rows`). A condition is data: a name, a kind, a
signal and a selector.

Memory: waiting conditions are recipes (their selection is made when their batch is
built); a repaired fork shares its compressed cache and owns only its K promoted rows; the
Full condition and the next-turn signal's forward write their turn into spare room of the
caches they read. `idlekv.repair.memory` predicts the peak from the same schedule.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from idlekv.attention import capture_queries
from idlekv.cache import TieredCache
from idlekv.cache.batch import CacheBatch
from idlekv.evaluation import prefill
from idlekv.generation import answer_token_budget, resume_batch, run_turn, stop_token_ids
from idlekv.models import with_cache
from idlekv.repair.granularity import first_k, rank_heads, unit_scores
from idlekv.repair.memory import KVShape, PeakPlan, SampleRows, predict_peak
from idlekv.repair.scoring import RowScores, proxy_queries, score_rows
from idlekv.repair.selectors import Coverage, TopKBurst, build_selector
from idlekv.retention.base import RetentionInputs, RetentionRule
from ruler.metrics import needle_recall
from ruler.render import encode, render
from ruler.sample import Sample

KINDS = ("full", "repair", "refresh")
SIGNALS = ("exact", "proxy", "stale", "rule", None)
ANCHORS = ("warm", "all")


@dataclass(frozen=True)
class Condition:
    name: str
    kind: str  # full | repair (B + K promoted from the warm tier) | refresh (re-select B+K)
    # exact | proxy | stale (turn-1 question) | rule (the turn-1 rule's own scores) | None (content-agnostic)
    signal: str | None = None
    # topk | topk_burst | coverage | random | oldest | span_ref; a refresh without one keeps the plain top B+K
    selector: str | None = None
    granularity: str = "shared"  # shared | layer | head
    deployable: bool = True
    # Where topk_burst may anchor a burst: "warm" (the evicted rows, as the reference ranks
    # them) or "all" (active rows too, so a burst can fill the evicted rows around a row the
    # next turn attends to that the rule kept: a needle kept with holes in its value).
    anchors: str = "warm"

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"condition {self.name}: kind {self.kind!r} not in {KINDS}")
        if self.signal not in SIGNALS:
            raise ValueError(f"condition {self.name}: signal {self.signal!r} not in {SIGNALS}")
        if self.kind == "repair" and self.selector is None:
            raise ValueError(f"condition {self.name}: a repair needs a selector")
        if self.kind == "refresh" and self.signal is None:
            raise ValueError(f"condition {self.name}: a refresh re-selects by a signal; name one")
        if self.anchors not in ANCHORS:
            raise ValueError(f"condition {self.name}: anchors {self.anchors!r} not in {ANCHORS}")
        if self.anchors == "all" and (self.kind != "repair" or self.selector != "topk_burst" or self.signal not in ("exact", "proxy", "stale")):
            raise ValueError(f"condition {self.name}: anchors='all' needs a topk_burst repair scored by exact, proxy or stale "
                             "(the signals that also score the active rows)")


STANDARD_CONDITIONS = (
    Condition("Full", "full"),
    # The rule's own next K rows: exactly the rule at B+K (its top B+K contains its top B).
    Condition("Matched", "repair", "rule", "topk", granularity="head"),
    Condition("IdleKV", "repair", "exact", "topk_burst"),
    Condition("Coverage", "repair", "exact", "coverage"),
    Condition("Random-K", "repair", None, "random"),
    Condition("Oldest-K", "repair", None, "oldest"),
    Condition("SpanRef-K", "repair", None, "span_ref", deployable=False),
    Condition("Refresh-buffered", "refresh", "exact", "topk_burst"),
)


@dataclass
class TurnOne:
    """The state after turn 1 was answered from the full cache."""

    root: TieredCache  # context + the turn-1 tail, uncompressed
    context_length: int  # rows at positions [0, context_length) are the context
    answer: list[int]
    turn_ids: list[list[int]]  # every turn's tokens, rendered once (turn k>0 follows the model's own answer)
    max_new_tokens: list[int]  # per turn: the answer budget in this tokenizer's tokens
    window_queries: list[torch.Tensor]  # per layer (query_heads, w, d): the observation window
    window_positions: torch.Tensor
    question_queries: list[torch.Tensor]  # the turn-1 question's queries (the "stale" signal)
    prefill_queries: list[torch.Tensor] | None = None  # every context token's queries, for rules that read them

    def rule_inputs(self) -> RetentionInputs:
        root = self.root
        return RetentionInputs([root.active.keys(i)[0] for i in range(root.num_layers)],
                               [root.active.positions(i)[0] for i in range(root.num_layers)],
                               self.window_queries, self.window_positions, self.context_length, self.prefill_queries)


@dataclass
class SampleTokens:
    prompt: list[int]
    turns: list[list[int]]
    max_new_tokens: list[int]

    def sample_rows(self, turn: int) -> SampleRows:
        return SampleRows(len(self.prompt), len(self.turns[0]), self.max_new_tokens[0], len(self.turns[turn]),
                          self.max_new_tokens[turn])


@dataclass
class EngineConfig:
    budgets: Sequence[int]
    ks: Sequence[int]
    conditions: Sequence[Condition] = STANDARD_CONDITIONS
    window: str = "answer"  # the turn-1 observation window: question | answer | both
    max_new_tokens: int = 48
    warm_precision: str = "model"
    chunk_rows: int | None = None  # warm rows per scoring chunk; None = by device (see scoring.py)
    burst: tuple[int, int] = (-2, 20)
    coverage_width: int = 23
    seed: int = 0
    turn: int = 1  # the turn that is repaired and scored (0-based): turn 2
    # The conditions of every (B, K) of a sample resume together, padded to the largest; a
    # batch holds at most this many (padded rows + the turn's room) x caches, so long contexts
    # split into several batches; budgets share batches while their waiting rows fit in one.
    resume_batch_rows: int = 131072
    extra: dict = field(default_factory=dict)


def rank_scores(order: torch.Tensor) -> torch.Tensor:
    """Scores that rank positions as `order` does (first = highest), for a rule's select."""
    scores = torch.empty(order.shape[0], dtype=torch.float32, device=order.device)
    scores[order] = -torch.arange(order.shape[0], dtype=torch.float32, device=order.device)
    return scores


class RepairEngine:
    def __init__(self, model, tokenizer, rule: RetentionRule, config: EngineConfig):
        self.model, self.tokenizer, self.rule, self.config = model, tokenizer, rule, config
        self.stop_ids = stop_token_ids(tokenizer, model)
        self.selectors = {}
        for c in config.conditions:
            if c.kind == "full":
                continue
            if c.selector == "topk_burst":
                self.selectors[c.selector] = TopKBurst(*config.burst)
            elif c.selector == "coverage":
                self.selectors[c.selector] = Coverage(config.coverage_width)
            elif c.selector is not None:
                self.selectors[c.selector] = build_selector(c.selector)

    def predicted_peak(self, sample: Sample, shape: KVShape) -> PeakPlan:
        """The device memory this engine will hold for `sample` (idlekv.repair.memory replays its schedule)."""
        cfg = self.config
        return predict_peak(shape, self.rows_of(sample).sample_rows(cfg.turn), cfg.budgets, cfg.ks,
                            [c.kind for c in cfg.conditions], cfg.resume_batch_rows)

    # --- turn 1 ------------------------------------------------------------------------
    def rows_of(self, sample: Sample) -> "SampleTokens":
        """The sample rendered once: prompt and turn tokens, and each turn's answer budget in this tokenizer."""
        rendered = render(sample, self.tokenizer)
        answer_format = sample.options.get("answer_format", "values")
        budgets = [answer_token_budget(self.tokenizer, t.gold_answer(answer_format, sample.options.get("num_values", 1)),
                                       self.config.max_new_tokens) for t in sample.turns]
        return SampleTokens(encode(self.tokenizer, rendered.prompt_text), [encode(self.tokenizer, t) for t in rendered.turn_texts],
                            budgets)

    def turn_one(self, sample: Sample) -> TurnOne:
        tokens = self.rows_of(sample)
        prompt, turn_ids, budgets = tokens.prompt, tokens.turns, tokens.max_new_tokens
        rows = tokens.sample_rows(self.config.turn)
        room = rows.tail + rows.headroom  # turn 1 and its answer, then the repaired turn and its answer (Full resumes in place)
        prefill_queries = None
        if self.rule.needs_prefill_queries:  # H2O-style rules read every prefill query
            with capture_queries(self.model) as pre:
                root = prefill(self.model, prompt, self.config.warm_precision, room)
            prefill_queries = [pre.queries[layer][0] for layer in range(root.num_layers)]
        else:
            root = prefill(self.model, prompt, self.config.warm_precision, room)
        turn1 = turn_ids[0]
        with capture_queries(self.model, accumulate=True) as cap:
            answer = run_turn(self.model, root, turn1, budgets[0], self.stop_ids)
        queries = [cap.queries[layer][0] for layer in range(root.num_layers)]
        n = len(prompt)
        positions = torch.arange(n, n + queries[0].shape[1])
        window = {"question": slice(0, len(turn1)), "answer": slice(len(turn1), None), "both": slice(0, None)}[self.config.window]
        if positions[window].numel() == 0:  # an empty answer leaves no answer window: fall back to the question
            window = slice(0, len(turn1))
        return TurnOne(root, n, answer, turn_ids, budgets, [q[:, window] for q in queries], positions[window],
                       [q[:, : len(turn1)] for q in queries], prefill_queries)

    def _keep(self, scores: torch.Tensor, budget: int, root: TieredCache, n_ctx: int) -> list[torch.Tensor]:
        context = self.rule.select(scores, budget)  # (layers, heads, budget) positions == root slots
        tail = torch.arange(n_ctx, root.rows).expand(context.shape[1], -1)
        return [torch.cat([context[layer], tail], dim=-1) for layer in range(context.shape[0])]

    # --- the next-turn signal ---------------------------------------------------------------
    def _signals(self, comp: TieredCache, turn_ids: list[int], stale_queries, rule_scores: torch.Tensor,
                 wanted: set[str] | None = None) -> dict[str, tuple[RowScores, float]]:
        """The next-turn signals the conditions use, each computed once per compressed cache."""
        wanted = {c.signal for c in self.config.conditions if c.signal} if wanted is None else wanted
        out = {}
        if "rule" in wanted:  # the turn-1 rule's scores of the rows it evicted
            start = time.perf_counter()
            rs = RowScores([], [], [], [], [])
            for layer in range(comp.num_layers):
                slots, positions = comp.warm.candidates(layer)
                rs.warm.append(torch.gather(rule_scores[layer], 1, positions[0]))
                rs.warm_positions.append(positions[0])
                rs.warm_slots.append(slots[0])
            out["rule"] = (rs, time.perf_counter() - start)
        if wanted & {"exact", "proxy"}:
            start = time.perf_counter()
            hf = comp.to_hf(scratch=True)  # the turn's rows land in spare room that no fork reads
            with capture_queries(self.model) as cap, torch.no_grad():
                self.model(torch.tensor([turn_ids], device=comp.active.device), **with_cache(self.model, hf),
                           position_ids=comp.position_ids(len(turn_ids)), use_cache=True, logits_to_keep=1)
            forward = time.perf_counter() - start
            if "exact" in wanted:
                start = time.perf_counter()
                out["exact"] = (score_rows(comp, [cap.queries[i][0] for i in range(comp.num_layers)], self.config.chunk_rows), forward + time.perf_counter() - start)
            if "proxy" in wanted:
                start = time.perf_counter()
                new_keys = [layer.keys[:, :, comp.rows :] for layer in hf.layers]
                out["proxy"] = (score_rows(comp, proxy_queries(new_keys), self.config.chunk_rows), forward + time.perf_counter() - start)
        if "stale" in wanted:
            start = time.perf_counter()
            out["stale"] = (score_rows(comp, stale_queries, self.config.chunk_rows), time.perf_counter() - start)
        return out

    # --- one condition's cache ---------------------------------------------------------------
    def _repair(self, cond: Condition, comp: TieredCache, k: int, n_ctx: int, signals, sample: Sample, b: int,
                memo: dict | None = None):
        """One condition's cache: a fork of `comp` with K warm rows promoted. `memo`, one dict
        per compressed cache, keeps what every K would recompute: the candidates of the
        signal-free selectors and, for selectors whose order does not depend on K, each head's
        ranked warm rows (so a K only takes its first K)."""
        memo = {} if memo is None else memo
        cache = comp.fork()
        start = time.perf_counter()
        selector = self.selectors[cond.selector]
        if cond.signal is not None:
            rs = signals[cond.signal][0]
            positions, slots = rs.warm_positions, rs.warm_slots
        else:
            if "candidates" not in memo:
                cands = [cache.warm.candidates(layer) for layer in range(cache.num_layers)]
                memo["candidates"] = [c[0][0] for c in cands], [c[1][0] for c in cands]
            slots, positions = memo["candidates"]
        ranked = memo.get(("ranked", cond)) if selector.k_free else None
        if ranked is None:
            if cond.signal is not None:
                per_unit = rs.units(n_ctx, cond.granularity)
                anchor_units = rs.units(n_ctx, cond.granularity, rows="context") if cond.anchors == "all" else None
            else:
                if ("free", cond.granularity) not in memo:
                    memo[("free", cond.granularity)] = unit_scores([torch.zeros(p.shape) for p in positions], positions, n_ctx, cond.granularity)
                per_unit, anchor_units = memo[("free", cond.granularity)], None
            spans = _turn_spans(sample, self.config.turn)
            orders = [selector.order(per_unit[u], ~per_unit[u].isnan(), k, seed=sample.seed + 7919 * k + b, spans=spans,
                                     anchor_scores=None if anchor_units is None else anchor_units[u])
                      for u in range(per_unit.shape[0])]
            ranked = rank_heads(orders, positions, slots, cond.granularity, n_ctx, None if selector.k_free else k)
            if selector.k_free:
                memo[("ranked", cond)] = ranked
        selection = first_k(ranked, k)
        select_s = time.perf_counter() - start
        start = time.perf_counter()
        cache.promote(selection)
        return cache, select_s, time.perf_counter() - start

    def _refresh(self, cond: Condition, root: TieredCache, signals, budget: int, n_ctx: int, sample: Sample):
        start = time.perf_counter()
        granularity = cond.granularity
        per_unit = signals[cond.signal][0].units(n_ctx, granularity, rows="context").nan_to_num(0.0)
        if cond.selector is not None:  # the repair's own selector over every context row (bursts included)
            spans = _turn_spans(sample, self.config.turn)
            selector, everything = self.selectors[cond.selector], torch.ones(n_ctx, dtype=torch.bool, device=per_unit.device)
            per_unit = torch.stack([rank_scores(selector.order(u, everything, budget, seed=sample.seed + budget, spans=spans))
                                    for u in per_unit])
        layers, heads = root.num_layers, root.active.kv_heads
        if granularity == "shared":
            expanded = per_unit.expand(layers * heads, -1)
        elif granularity == "layer":
            expanded = per_unit.repeat_interleave(heads, dim=0)
        else:
            expanded = per_unit
        cache = root.fork()
        cache.compress(self._keep(expanded.view(layers, heads, n_ctx).cpu(), budget, root, n_ctx), warm=False)
        return cache, time.perf_counter() - start

    # --- a sample ------------------------------------------------------------------------------
    @torch.no_grad()
    def run_sample(self, sample: Sample, labels: dict | None = None) -> list[dict]:
        cfg, labels = self.config, dict(labels or {})
        turn = cfg.turn
        first = self.turn_one(sample)
        root, n_ctx, stale_q = first.root, first.context_length, first.question_queries
        answer1_text = self.tokenizer.decode(first.answer)
        turn_ids, max_new = first.turn_ids[turn], first.max_new_tokens[turn]
        gold = sample.turns[turn].outputs
        needles = _needle_table(_turn_spans(sample, turn), root.seen_tokens, root.device)
        base = {**labels, "index": sample.index, "context_tokens": n_ctx, "tail_rows": root.rows - n_ctx,
                "turn1_accuracy": sum(needle_recall(answer1_text, sample.turns[0].outputs)) / max(1, len(sample.turns[0].outputs))}

        start = time.perf_counter()
        scores = self.rule.score(first.rule_inputs()).cpu()
        base["rule_s"] = time.perf_counter() - start

        rows = []

        def record(cond, cache, answer, b, k, **timing):
            text = self.tokenizer.decode(answer)
            recall = needle_recall(text, gold)
            rows.append({**base, "condition": cond.name, "deployable": cond.deployable, "B": b, "K": k,
                         "accuracy": sum(recall) / len(recall), "recall": recall, "answer": text, **cache,
                         **{"score_s": 0.0, "select_s": 0.0, "promote_s": 0.0, "resume_s": 0.0, **timing}})

        full = next((c for c in cfg.conditions if c.kind == "full"), None)
        if full is not None:
            start = time.perf_counter()
            answer = resume_batch(self.model, [root], turn_ids, max_new, self.stop_ids)[0]
            resume_s = time.perf_counter() - start
            for b in cfg.budgets:
                for k in cfg.ks:
                    record(full, _cache_columns(root, needles), answer, b, k, resume_s=resume_s)

        pending: list[_Pending] = []
        headroom = len(turn_ids) + max_new
        for b in cfg.budgets:
            comp = root.fork()
            comp.compress(self._keep(scores, b, root, n_ctx), reserve=max(max(cfg.ks), len(turn_ids)))
            signals, memo = self._signals(comp, turn_ids, stale_q, scores), {}
            tail = root.rows - n_ctx
            for k in cfg.ks:
                for cond in cfg.conditions:
                    if cond.kind != "full":
                        pending.append(_Pending(cond, b, k, b + k + tail, self._recipe(cond, comp, root, k, b, n_ctx, signals,
                                                                                     sample, memo)))
            # Budgets share batches (fewer, fuller forwards) while their waiting rows fit in one batch;
            # past that, resume now so memory does not grow with the grid.
            if sum(p.rows + headroom for p in pending) >= cfg.resume_batch_rows:
                self._resume(pending, turn_ids, max_new, needles, record)
        self._resume(pending, turn_ids, max_new, needles, record)
        return rows

    def _recipe(self, cond: Condition, comp: TieredCache, root: TieredCache, k: int, b: int, n_ctx: int, signals,
                sample: Sample, memo: dict):
        """How to build one condition's cache when its batch is assembled: (cache, timings)."""
        if cond.kind == "repair":
            def build():
                cache, select_s, promote_s = self._repair(cond, comp, k, n_ctx, signals, sample, b, memo)
                return cache, {"score_s": signals[cond.signal][1] if cond.signal else 0.0, "select_s": select_s,
                               "promote_s": promote_s}
        else:
            def build():
                cache, select_s = self._refresh(cond, root, signals, b + k, n_ctx, sample)
                return cache, {"score_s": signals[cond.signal][1], "select_s": select_s}
        return build

    def _resume(self, pending: list["_Pending"], turn_ids: list[int], max_new: int, needles, record) -> None:
        """Build the waiting caches batch by batch into one padded buffer each, resume, record, free."""
        headroom = len(turn_ids) + max_new
        for batch in _batches(pending, self.config.resume_batch_rows, headroom):
            stacked, columns, timings = None, [], []
            for slot, item in enumerate(batch):
                cache, timing = item.build()
                stacked = stacked or CacheBatch([p.rows for p in batch], cache, headroom)
                stacked.put(slot, cache)
                columns.append(_cache_columns(cache, needles))
                timings.append(timing)
                del cache  # only the batch buffer holds its rows from here on
            start = time.perf_counter()
            answers = resume_batch(self.model, stacked, turn_ids, max_new, self.stop_ids)
            resume_s = (time.perf_counter() - start) / len(batch)
            for item, cols, timing, answer in zip(batch, columns, timings, answers):
                record(item.cond, cols, answer, item.b, item.k, resume_s=resume_s, **timing)
        pending.clear()


@dataclass
class _Pending:
    """A condition of one (B, K) cell waiting for its batch: its cache is built then."""

    cond: Condition
    b: int
    k: int
    rows: int  # active rows it will hold (B + K + the turn-1 tail)
    build: object  # () -> (TieredCache, timings)


def _cache_columns(cache: TieredCache, needles) -> dict:
    """What a row reports of a condition's cache, measured from its tensors."""
    size = cache.bytes()
    return {"active_rows": cache.rows, "active_bytes": size.active_kv, "warm_bytes": size.warm_kv,
            "needle_rows_active": _span_coverage(cache, needles)}


def _batches(pending: list, max_rows: int, headroom: int = 0) -> list[list]:
    """Group caches (smallest first) so that each batch's padded rows (+ the turn's room) x caches stay within max_rows."""
    batches, current = [], []
    for item in sorted(pending, key=lambda p: p.rows):
        if current and (item.rows + headroom) * (len(current) + 1) > max_rows:
            batches.append(current)
            current = []
        current.append(item)
    return batches + ([current] if current else [])


def _turn_spans(sample: Sample, turn: int) -> list[tuple[int, int]]:
    """The token spans [start, end) of the needles the turn asks about (SpanRef-K and the coverage column)."""
    return [(n.token_start, n.token_end) for n in sample.needles_for_turn(turn)]


def _needle_table(spans: list[tuple[int, int]], length: int, device) -> tuple[torch.Tensor, int]:
    """A lookup by position of the next-turn needle rows, and how many there are."""
    wanted = torch.cat([torch.arange(a, b) for a, b in spans]) if spans else torch.zeros(0, dtype=torch.long)
    table = torch.zeros(max(length, int(wanted.max()) + 1 if wanted.numel() else 0), dtype=torch.bool)
    table[wanted] = True
    return table.to(device), wanted.numel()


def _span_coverage(cache: TieredCache, needles: tuple[torch.Tensor, int]) -> float:
    """Fraction of the next-turn needle rows present in the active tier (over layers and heads)."""
    table, count = needles
    if not count:
        return 0.0
    hits = torch.stack([table[cache.active.positions(layer)[0]].sum(-1) for layer in range(cache.num_layers)])
    return float((hits.cpu().float() / count).mean())  # on the CPU: the same float on every device
