"""The multi-turn session: one cache per condition carried across N turns, repaired at every pause.

A conversation is rendered once. Turn 1 is answered from the full cache, shared by every
condition. Then each condition keeps its own cache (its trajectory) through the turns; at the
pause before turn t+1:
  compress: the turn-1 rule scores every row the trajectory has seen (active and warm keys, by
            position), with the trajectory's own last answer as its observation window, and keeps
            B context rows. Cumulative (default): only rows still active can be kept, what was
            evicted before stays in the warm tier, and rows promoted at the last pause can be
            evicted again (they go back to the warm tier). Non-cumulative (the reference's): the
            B rows are re-selected from the full pool of context rows every pause.
  score:    the condition's signal scores the warm rows for turn t+1;
  promote:  its selector promotes K of them.
Every turn's rows (questions and answers) stay active, outside the budget: at a pause a
repaired condition holds B + K context rows plus every turn so far. Then turn t+1 is
prefilled over every trajectory's cache as one padded batch and decoded; each trajectory
takes in its own new rows.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from idlekv.attention import capture_queries
from idlekv.cache import TieredCache
from idlekv.cache.batch import CacheBatch
from idlekv.cache.quant import dequantize
from idlekv.cache.selection import gather_rows
from idlekv.engine import EngineConfig, RepairEngine, TurnOne
from idlekv.generation import resume_batch
from idlekv.repair.batching import cache_columns, needle_table, turn_spans
from idlekv.repair.conditions import Condition
from idlekv.repair.digest import DigestOptions
from idlekv.retention.base import RetentionInputs, RetentionRule
from ruler.metrics import needle_recall
from ruler.sample import Sample


@dataclass
class SessionConfig:
    budget: int  # B: context rows kept at every pause
    k: int  # K: rows promoted at every pause
    conditions: Sequence[Condition]
    cumulative: bool = True  # False: re-select B from the full pool every pause (the reference's multi-turn)
    window: str = "answer"  # the rule's observation window: the trajectory's last question | answer | both
    max_new_tokens: int = 32
    warm_precision: str = "model"
    chunk_rows: int | None = None
    digest: DigestOptions = field(default_factory=DigestOptions)


@dataclass
class Trajectory:
    """One condition's cache through the turns, and what its rule reads at the next pause."""

    cond: Condition
    cache: TieredCache
    window_queries: list[torch.Tensor]  # per layer (query_heads, w, d): the observation window of its last turn
    window_positions: torch.Tensor
    promoted: list[torch.Tensor] | None = None  # per layer (kv_heads, K) positions promoted at the last pause


@dataclass
class PauseStats:
    rows_before: int = 0  # active rows when the pause began
    evicted_again: float = 0.0  # share of the rows promoted at the last pause that this pause evicted
    score_s: float = 0.0
    select_s: float = 0.0
    promote_s: float = 0.0
    compress_s: float = 0.0


class SessionEngine:
    def __init__(self, model, tokenizer, rule: RetentionRule, config: SessionConfig):
        if rule.needs_prefill_queries:
            raise ValueError(f"{rule.name} reads every prefill query; the session engine re-scores with each turn's "
                             "window only")
        if not rule.plans_uniform:
            raise ValueError(f"{rule.name} plans ragged or tri-state caches; the session engine re-selects B rows per head "
                             "at every pause and holds them at one precision (the single-pause engine, phase03, honours them)")
        refresh = [c.name for c in config.conditions if c.kind == "refresh"]
        if refresh:
            raise ValueError(f"conditions {refresh}: a refresh re-selects from the root every pause; the session engine "
                             "runs full and repair conditions")
        self.config = config
        self.engine = RepairEngine(model, tokenizer, rule, EngineConfig(
            budgets=[config.budget], ks=[config.k], conditions=list(config.conditions), window=config.window,
            max_new_tokens=config.max_new_tokens, warm_precision=config.warm_precision, chunk_rows=config.chunk_rows,
            digest=config.digest))
        self.model, self.tokenizer, self.rule = model, tokenizer, rule

    # --- a conversation ------------------------------------------------------------------------
    @torch.no_grad()
    def run_sample(self, sample: Sample, labels: dict | None = None, wrong: Sample | None = None) -> list[dict]:
        """One row per (condition, turn). `wrong`: another sample whose turns the wrong signal scores with."""
        first = self.engine.turn_one(sample)  # renders the conversation, once
        trajectories = [Trajectory(c, first.root.fork(), first.window_queries, first.window_positions)
                        for c in self.config.conditions]
        wrong_turns = None if wrong is None else self.engine.rows_of(wrong).turns
        answered_from = [self._columns(sample, first, first.root, 0) for _ in trajectories]
        rows = [self._row(sample, first, t, 0, first.answer, PauseStats(), c, labels) for t, c in zip(trajectories, answered_from)]
        for turn in range(1, len(sample.turns)):
            stats = [self._pause(t, first, sample, turn, wrong_turns) for t in trajectories]
            answered_from = [self._columns(sample, first, t.cache, turn) for t in trajectories]
            answers = self._resume(trajectories, first.turn_ids[turn], first.max_new_tokens[turn])
            rows += [self._row(sample, first, t, turn, a, s, c, labels)
                     for t, a, s, c in zip(trajectories, answers, stats, answered_from)]
        return rows

    # --- the pause before a turn -----------------------------------------------------------------
    def _pause(self, traj: Trajectory, first: TurnOne, sample: Sample, turn: int, wrong_turns) -> PauseStats:
        stats = PauseStats(rows_before=traj.cache.rows)
        if traj.cond.kind == "full":
            return stats
        cfg, n_ctx = self.config, first.context_length
        start = time.perf_counter()
        scores = self.rule.score(self._rule_inputs(traj, n_ctx)).cpu()  # (layers, heads, positions)
        comp = self._compress(traj, first, scores)
        stats.compress_s = time.perf_counter() - start
        stats.evicted_again = _evicted_again(traj.promoted, comp)
        if cfg.k == 0:  # nothing to promote: the compressed cache goes on
            traj.cache, traj.promoted = comp, None
            return stats
        signals = self.engine.signals(comp, first.turn_ids[turn], first.question_queries, scores, {traj.cond.signal} - {None},
                                      wrong_turn_ids=None if wrong_turns is None else wrong_turns[turn])
        repaired, stats.select_s, stats.promote_s = self.engine.repair(traj.cond, comp, cfg.k, n_ctx, signals, sample,
                                                                        cfg.budget, {}, turn=turn)
        stats.score_s = signals[traj.cond.signal].seconds if traj.cond.signal else 0.0
        repaired.active.own()  # the trajectory's own buffers from here on
        traj.cache, traj.promoted = repaired, [repaired.active.positions(i)[0, :, -cfg.k:] for i in range(repaired.num_layers)]
        return stats

    def _rule_inputs(self, traj: Trajectory, n_ctx: int) -> RetentionInputs:
        """Every row the trajectory has seen, active or warm, in position order, with its own last window."""
        keys = seen_keys(traj.cache)
        positions = torch.arange(traj.cache.seen_tokens, device=keys[0].device).expand(keys[0].shape[0], -1)
        return RetentionInputs(keys, [positions] * len(keys), traj.window_queries, traj.window_positions, n_ctx)

    def _compress(self, traj: Trajectory, first: TurnOne, scores: torch.Tensor) -> TieredCache:
        """The trajectory's cache at B context rows (every turn's rows kept), with room for K and the turn."""
        cfg, n_ctx, cache = self.config, first.context_length, traj.cache
        room = cfg.k + max(len(t) for t in first.turn_ids)
        if not cfg.cumulative:  # the reference: re-select B from the full pool, then its own later turns
            comp = first.root.fork()
            comp.compress(self.engine.keep(scores, cfg.budget, first.root, n_ctx), reserve=room + cache.rows)
            later = cache.seen_tokens - first.root.seen_tokens
            if later:
                comp.active.append(*[[t[:, :, -later:] for t in part] for part in _by_position(cache)])
                comp.seen_tokens = cache.seen_tokens
            return comp
        active = [cache.active.positions(i)[0] for i in range(cache.num_layers)]
        still_active = torch.zeros(scores.shape, dtype=torch.bool)
        for layer, pos in enumerate(active):  # only rows still active can be kept: eviction is cumulative
            context = pos[pos < n_ctx].view(pos.shape[0], -1).cpu()
            still_active[layer].scatter_(1, context, True)
        chosen = self.rule.select(scores.masked_fill(~still_active, float("-inf")), cfg.budget)  # (layers, heads, B)
        comp = cache.fork()
        comp.compress([_slots_of(active[layer], chosen[layer].to(active[layer].device), n_ctx)
                       for layer in range(cache.num_layers)], reserve=room)
        return comp

    # --- the turn, for every trajectory at once ----------------------------------------------------
    def _resume(self, trajectories: list[Trajectory], turn_ids: list[int], max_new: int) -> list[list[int]]:
        caches = [t.cache for t in trajectories]
        batch = CacheBatch([c.rows for c in caches], caches[0], len(turn_ids) + max_new, [c.seen_tokens for c in caches])
        for slot, cache in enumerate(caches):
            batch.put(slot, cache)
        decoded: dict = {}
        with capture_queries(self.model, accumulate=True) as cap:
            answers = resume_batch(self.model, batch, turn_ids, max_new, self.engine.stop_ids, decoded)
        for slot, (traj, answer) in enumerate(zip(trajectories, answers)):
            start = traj.cache.seen_tokens
            answered = min(len(answer), decoded["fed"])  # answer tokens fed back: the last of a full budget is not
            new = len(turn_ids) + answered  # the rows this conversation really wrote
            keys, values = batch.new_rows(slot, new)
            positions = traj.cache.position_ids(new).unsqueeze(1).expand(-1, traj.cache.active.kv_heads, -1)
            traj.cache.active.own()
            traj.cache.active.append(keys, values, [positions] * traj.cache.num_layers)
            traj.cache.seen_tokens += new
            window = _window(self.config.window, len(turn_ids), answered)
            traj.window_queries = [cap.queries[layer][slot][:, window] for layer in range(traj.cache.num_layers)]
            traj.window_positions = torch.arange(start, start + new)[window]
        return answers

    def _columns(self, sample: Sample, first: TurnOne, cache: TieredCache, turn: int) -> dict:
        """The cache a turn is answered from, measured from its tensors (before the turn's rows join it)."""
        needles = needle_table(turn_spans(sample, turn), cache.seen_tokens, cache.device)
        earlier_turns = 0 if turn == 0 else cache.rows - _context_rows(cache, first.context_length)  # turn 1: the prompt only
        return {**cache_columns(cache, needles), "warm_rows": cache.warm.rows, "turn_rows": earlier_turns}

    def _row(self, sample: Sample, first: TurnOne, traj: Trajectory, turn: int, answer: list[int], stats: PauseStats,
             columns: dict, labels: dict | None) -> dict:
        text = self.tokenizer.decode(answer)
        recall = needle_recall(text, sample.turns[turn].outputs)
        return {**(labels or {}), "index": sample.index, "condition": traj.cond.name, "turn": turn + 1,
                "B": self.config.budget, "K": self.config.k, "cumulative": self.config.cumulative,
                "accuracy": sum(recall) / max(1, len(recall)), "recall": recall, "answer": text,
                "context_tokens": first.context_length, **columns, "rows_before_pause": stats.rows_before,
                "evicted_again": stats.evicted_again, "compress_s": stats.compress_s, "score_s": stats.score_s,
                "select_s": stats.select_s, "promote_s": stats.promote_s}


def seen_keys(cache: TieredCache) -> list[torch.Tensor]:
    """Per layer (kv_heads, seen, d): the keys of every row seen, active or warm, by position (on the device)."""
    out = []
    for layer in range(cache.num_layers):
        active_pos = cache.active.positions(layer)[0]
        keys = torch.zeros(active_pos.shape[0], cache.seen_tokens, cache.active.head_dim, dtype=cache.active.dtype,
                           device=cache.device)
        keys.scatter_(1, active_pos[..., None].expand(-1, -1, keys.shape[-1]), cache.active.keys(layer)[0])
        slots, warm_pos = cache.warm.candidates(layer)
        if slots.numel():
            stored = cache.warm._k[layer].map(lambda t, s=slots: gather_rows(t, s))
            warm = dequantize(stored.map(cache.warm.upload), cache.active.dtype)[0]
            keys.scatter_(1, warm_pos[0].to(cache.device)[..., None].expand(-1, -1, keys.shape[-1]), warm)
        out.append(keys)
    return out


def _by_position(cache: TieredCache) -> tuple[list, list, list]:
    """(keys, values, positions) per layer of the active rows, ordered by position."""
    keys, values, positions = [], [], []
    for layer in range(cache.num_layers):
        pos = cache.active.positions(layer)
        order = pos.argsort(dim=-1)
        gather = order[..., None].expand(-1, -1, -1, cache.active.head_dim)
        keys.append(torch.gather(cache.active.keys(layer), 2, gather))
        values.append(torch.gather(cache.active.values(layer), 2, gather))
        positions.append(torch.gather(pos, -1, order))
    return keys, values, positions


def _slots_of(active_positions: torch.Tensor, chosen: torch.Tensor, n_ctx: int) -> torch.Tensor:
    """(heads, B + turn rows) active slots: those holding the chosen context positions, then every turn row."""
    heads, rows = active_positions.shape
    lookup = torch.full((heads, int(active_positions.max()) + 1), -1, dtype=torch.long, device=active_positions.device)
    lookup.scatter_(1, active_positions, torch.arange(rows, device=active_positions.device).expand(heads, -1))
    context = torch.gather(lookup, 1, chosen)
    if bool((context < 0).any()):
        raise RuntimeError("the rule chose a context row that is not active")
    turns = torch.stack([torch.nonzero(active_positions[h] >= n_ctx).flatten() for h in range(heads)])
    return torch.cat([context, turns], dim=-1)


def _evicted_again(promoted: list[torch.Tensor] | None, comp: TieredCache) -> float:
    """Share of the rows promoted at the last pause that are in the warm tier again after this compression."""
    if promoted is None:
        return 0.0
    again = total = 0
    for layer, rows in enumerate(promoted):
        kept = comp.active.positions(layer)[0]
        hit = (rows[..., None].to(kept.device) == kept[:, None, :]).any(-1)
        again, total = again + int((~hit).sum()), total + hit.numel()
    return again / max(total, 1)


def _context_rows(cache: TieredCache, n_ctx: int) -> int:
    return int((cache.active.positions(0)[0, 0] < n_ctx).sum())


def _window(kind: str, question: int, answer: int) -> slice:
    if kind == "question" or answer == 0:  # an empty answer leaves no answer window
        return slice(0, question)
    return {"answer": slice(question, question + answer), "both": slice(0, question + answer)}[kind]

