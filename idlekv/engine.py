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
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch

from idlekv.attention import capture_queries
from idlekv.cache import TieredCache
from idlekv.cache.batch import CacheBatch
from idlekv.evaluation import prefill
from idlekv.generation import answer_token_budget, resume_batch, run_turn, stop_token_ids
from idlekv.repair.batching import Pending, batches, cache_columns, needle_table, turn_spans
from idlekv.repair.conditions import STANDARD_CONDITIONS, Condition
from idlekv.repair.digest import DigestOptions
from idlekv.repair.granularity import first_k, rank_heads, unit_scores
from idlekv.repair.memory import KVShape, PeakPlan, SampleRows, predict_peak
from idlekv.repair.planned import PlannedCache, apply_plan
from idlekv.repair.signals import PauseInputs, Signal, compute_signals
from idlekv.retention.base import RetentionInputs, RetentionRule
from ruler.metrics import needle_recall
from ruler.render import encode, render
from ruler.sample import Sample


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
    prefill_queries: list[torch.Tensor] | None = None  # every query so far (context, turn 1), for rules that read them

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
    digest: DigestOptions = field(default_factory=DigestOptions)  # pages of the digest signal (kept only when a condition reads it)
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
        self._built: dict[str, Condition] = {}
        names = [c.name for c in config.conditions]
        if len(set(names)) != len(names):
            raise ValueError(f"condition names must be unique; got {names}")
        self.selectors = {c.name: c.build_selector() for c in config.conditions if c.selector is not None}

    def selector(self, cond: Condition):
        """The condition's selector, built from its own options (once per condition)."""
        if cond.name not in self.selectors or self._built.get(cond.name) not in (None, cond):
            self.selectors[cond.name] = cond.build_selector()
        self._built[cond.name] = cond
        return self.selectors[cond.name]

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
        if any(c.signal == "digest" for c in self.config.conditions):  # pages are summarised as rows are evicted
            root.warm.keep_digest(self.config.digest.page_rows)
        turn1 = turn_ids[0]
        with capture_queries(self.model, accumulate=True) as cap:
            answer = run_turn(self.model, root, turn1, budgets[0], self.stop_ids)
        queries = [cap.queries[layer][0] for layer in range(root.num_layers)]
        n = len(prompt)
        positions = torch.arange(n, n + queries[0].shape[1])
        window = {"question": slice(0, len(turn1)), "answer": slice(len(turn1), None), "both": slice(0, None)}[self.config.window]
        if positions[window].numel() == 0:  # an empty answer leaves no answer window: fall back to the question
            window = slice(0, len(turn1))
        if prefill_queries is not None:  # H2O accumulates turn 1's queries (question and answer) too, as decoding does
            prefill_queries = [torch.cat([p, q.to(p.device)], dim=1) for p, q in zip(prefill_queries, queries)]
        return TurnOne(root, n, answer, turn_ids, budgets, [q[:, window] for q in queries], positions[window],
                       [q[:, : len(turn1)] for q in queries], prefill_queries)

    def keep(self, scores: torch.Tensor, budget: int, root: TieredCache, n_ctx: int) -> list[torch.Tensor]:
        context = self.rule.select(scores, budget)  # (layers, heads, budget) positions == root slots
        tail = torch.arange(n_ctx, root.rows).expand(context.shape[1], -1)
        return [torch.cat([context[layer], tail], dim=-1) for layer in range(context.shape[0])]

    # --- the next-turn signal ---------------------------------------------------------------
    def signals(self, comp: TieredCache, turn_ids: list[int], stale_queries, rule_scores: torch.Tensor,
                wanted: set[str] | None = None, wrong_turn_ids: list[int] | None = None,
                active_visible: list[torch.Tensor] | None = None) -> dict[str, Signal]:
        """The next-turn signals the conditions use, each computed once per compressed cache
        (`active_visible`: a ragged plan's padding, which no signal may count)."""
        wanted = {c.signal for c in self.config.conditions if c.signal} if wanted is None else wanted
        inputs = PauseInputs(self.model, comp, turn_ids, stale_queries, rule_scores, wrong_turn_ids, self.config.chunk_rows,
                             active_visible, self.config.digest)
        return compute_signals(inputs, wanted)

    # --- one condition's cache ---------------------------------------------------------------
    def repair(self, cond: Condition, comp: TieredCache, k: int, n_ctx: int, signals, sample: Sample, b: int,
               memo: dict | None = None, turn: int | None = None):
        """One condition's cache: a fork of `comp` with K warm rows promoted before `turn` (the
        config's by default). `memo`, one dict per compressed cache, keeps what every K would
        recompute: the candidates of the signal-free selectors and, for selectors whose order
        does not depend on K, each head's ranked warm rows (so a K only takes its first K)."""
        memo = {} if memo is None else memo
        turn = self.config.turn if turn is None else turn
        cache = comp.fork()
        start = time.perf_counter()
        selector = self.selector(cond)
        if cond.signal is not None:
            rs = signals[cond.signal].scores
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
            spans, answer_spans = turn_spans(sample, turn), turn_spans(sample, turn, "answer")
            seed = sample.seed + 7919 * k + b + 104729 * (turn - self.config.turn)  # another draw at every pause
            orders = [selector.order(per_unit[u], ~per_unit[u].isnan(), k, seed=seed, spans=spans, answer_spans=answer_spans,
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

    def refresh(self, cond: Condition, root: TieredCache, signals, budget: int, n_ctx: int, sample: Sample):
        start = time.perf_counter()
        granularity = cond.granularity
        per_unit = signals[cond.signal].scores.units(n_ctx, granularity, rows="context").nan_to_num(0.0)
        if cond.selector is not None:  # the repair's own selector over every context row (bursts included)
            spans = turn_spans(sample, self.config.turn)
            selector, everything = self.selector(cond), torch.ones(n_ctx, dtype=torch.bool, device=per_unit.device)
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
        cache.compress(self.keep(expanded.view(layers, heads, n_ctx).cpu(), budget, root, n_ctx), warm=False)
        return cache, time.perf_counter() - start

    # --- a sample ------------------------------------------------------------------------------
    @torch.no_grad()
    def run_sample(self, sample: Sample, labels: dict | None = None, wrong: Sample | None = None) -> list[dict]:
        """Every condition of every (B, K) cell of one sample: one prefill, one signal per B, batched resumes.

        `wrong`: another sample of the task, whose next turn the wrong signal (WrongQ) scores with."""
        cfg = self.config
        first = self.turn_one(sample)
        pause = self.pause_after_turn_one(sample, first, labels or {}, wrong)
        self._resume_full(pause)
        pending: list[Pending] = []
        for b in cfg.budgets:
            pending += self._waiting_conditions(pause, b)
            # Budgets share batches (fewer, fuller forwards) while their waiting rows fit in one batch;
            # past that, resume now so memory does not grow with the grid.
            if sum(p.rows + pause.headroom for p in pending) >= cfg.resume_batch_rows:
                self._resume(pending, pause)
        self._resume(pending, pause)
        return pause.recorder.rows

    def pause_after_turn_one(self, sample: Sample, first: TurnOne, labels: dict, wrong: Sample | None = None) -> "Pause":
        """What every condition at the repaired pause shares: the next turn, the rule's scores, the rows' labels."""
        turn = self.config.turn
        start = time.perf_counter()
        scores = self.rule.score(first.rule_inputs()).cpu()
        rule_s = time.perf_counter() - start
        first_turn = sample.turns[0].outputs
        base = {**labels, "index": sample.index, "context_tokens": first.context_length,
                "tail_rows": first.root.rows - first.context_length, "rule_s": rule_s,
                "turn1_accuracy": sum(needle_recall(self.tokenizer.decode(first.answer), first_turn)) / max(1, len(first_turn))}
        return Pause(sample, first, scores, first.turn_ids[turn], first.max_new_tokens[turn],
                     needle_table(turn_spans(sample, turn), first.root.seen_tokens, first.root.device),
                     Recorder(self.tokenizer, base, sample.turns[turn].outputs),
                     None if wrong is None else self.rows_of(wrong).turns[turn])

    def _resume_full(self, pause: "Pause") -> None:
        full = next((c for c in self.config.conditions if c.kind == "full"), None)
        if full is None:
            return
        root = pause.first.root
        start = time.perf_counter()
        answer = resume_batch(self.model, [root], pause.turn_ids, pause.max_new, self.stop_ids)[0]
        resume_s = time.perf_counter() - start
        for b in self.config.budgets:
            for k in self.config.ks:
                pause.recorder.record(full, cache_columns(root, pause.needles), answer, b, k, {"resume_s": resume_s})

    def compressed(self, pause: "Pause", b: int) -> PlannedCache:
        """The rule's plan at B applied to the root: what every condition of this B forks."""
        first = pause.first
        plan = self.rule.plan(first.rule_inputs(), b, pause.scores)
        return apply_plan(first.root, plan, first.context_length, reserve=max(max(self.config.ks), len(pause.turn_ids)))

    def _waiting_conditions(self, pause: "Pause", b: int) -> list[Pending]:
        """Compress to B, compute the signals once, and queue every condition of every K (built when batched)."""
        cfg, first = self.config, pause.first
        root, n_ctx = first.root, first.context_length
        planned = self.compressed(pause, b)
        comp = planned.cache
        with planned.masks(self.model):  # a ragged plan's padding is hidden from the next turn's forward too
            signals = self.signals(comp, pause.turn_ids, first.question_queries, pause.scores, wrong_turn_ids=pause.wrong_turn_ids,
                                   active_visible=planned.visible)
        memo, tail = {}, root.rows - n_ctx
        # a repair holds the compressed rows (a ragged plan's padding included) + K; a refresh B + K + the tail
        return [Pending(cond, b, k, comp.rows + k if cond.kind == "repair" else b + k + tail,
                        self._recipe(cond, comp, root, k, b, n_ctx, signals, pause.sample, memo), planned if cond.kind == "repair" else None)
                for k in cfg.ks for cond in cfg.conditions if cond.kind != "full"]

    def _recipe(self, cond: Condition, comp: TieredCache, root: TieredCache, k: int, b: int, n_ctx: int, signals,
                sample: Sample, memo: dict):
        """How to build one condition's cache when its batch is assembled: (cache, timings)."""
        score_s = signals[cond.signal].seconds if cond.signal else 0.0
        if cond.kind == "repair":
            def build():
                cache, select_s, promote_s = self.repair(cond, comp, k, n_ctx, signals, sample, b, memo)
                return cache, {"score_s": score_s, "select_s": select_s, "promote_s": promote_s}
        else:
            def build():
                cache, select_s = self.refresh(cond, root, signals, b + k, n_ctx, sample)
                return cache, {"score_s": score_s, "select_s": select_s}
        return build

    def _resume(self, pending: list[Pending], pause: "Pause") -> None:
        """Build the waiting caches batch by batch into one padded buffer each, resume, record, free.

        Caches forked from a masked plan batch only with forks of the same plan (their masks share a layout)."""
        groups: dict[int, list[Pending]] = {}
        for item in pending:
            masked = item.planned is not None and item.planned.visible is not None
            groups.setdefault(id(item.planned) if masked else 0, []).append(item)
        for group in groups.values():
            planned = group[0].planned if group[0].planned is not None and group[0].planned.visible is not None else None
            for batch in batches(group, self.config.resume_batch_rows, pause.headroom):
                self._resume_batch(batch, pause, planned)
        pending.clear()

    def _resume_batch(self, batch: list[Pending], pause: "Pause", planned: PlannedCache | None) -> None:
        stacked, columns, timings = None, [], []
        for slot, item in enumerate(batch):
            cache, timing = item.build()
            stacked = stacked or CacheBatch([p.rows for p in batch], cache, pause.headroom)
            stacked.put(slot, cache)
            columns.append(planned_columns(cache_columns(cache, pause.needles), item.planned))
            timings.append(timing)
            del cache  # only the batch buffer holds its rows from here on
        start = time.perf_counter()
        with nullcontext() if planned is None else planned.masks(self.model):
            answers = resume_batch(self.model, stacked, pause.turn_ids, pause.max_new, self.stop_ids)
        resume_s = (time.perf_counter() - start) / len(batch)
        for item, cols, timing, answer in zip(batch, columns, timings, answers):
            pause.recorder.record(item.cond, cols, answer, item.b, item.k, {**timing, "resume_s": resume_s})


def planned_columns(columns: dict, planned: PlannedCache | None) -> dict:
    """A row's cache columns with the bytes the plan stores: what the tensors hold, less its padding and quantized savings."""
    if planned is None:
        return {**columns, "active_allocated_bytes": columns["active_bytes"]}
    return {**columns, "active_bytes": columns["active_bytes"] - planned.held_not_kept, "active_allocated_bytes": columns["active_bytes"]}


@dataclass
class Recorder:
    """One result row per (condition, B, K) of a sample, scored against the repaired turn's gold values."""

    tokenizer: object
    base: dict  # the sample's labels and the columns every row shares
    gold: list[str]
    rows: list[dict] = field(default_factory=list)

    def record(self, cond: Condition, columns: dict, answer: list[int], b: int, k: int, timing: dict) -> None:
        text = self.tokenizer.decode(answer)
        recall = needle_recall(text, self.gold)
        self.rows.append({**self.base, "condition": cond.name, "deployable": cond.deployable, "B": b, "K": k,
                          "accuracy": sum(recall) / len(recall), "recall": recall, "answer": text, **columns,
                          "score_s": 0.0, "select_s": 0.0, "promote_s": 0.0, "resume_s": 0.0, **timing})


@dataclass
class Pause:
    """The repaired pause of one sample, as every condition at it sees it."""

    sample: Sample
    first: TurnOne
    scores: torch.Tensor  # the turn-1 rule's scores (layers, kv_heads, positions)
    turn_ids: list[int]  # the repaired turn's tokens
    max_new: int  # its answer budget
    needles: tuple  # needle_table of the turn's needle rows
    recorder: Recorder
    wrong_turn_ids: list[int] | None = None

    @property
    def headroom(self) -> int:
        return len(self.turn_ids) + self.max_new
