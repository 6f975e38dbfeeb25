"""phase07's measurements on the embedded model: the digest's recall on real keys (of the exact signal's
top-K rows and of the next turn's needle rows) and the whole repair of a long sample against
re-prefilling its prefix on the same device."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from idlekv.engine import RepairEngine
from idlekv.evaluation import prefill
from idlekv.repair.batching import turn_spans
from idlekv.repair.digest import DigestOptions, PageDigest, digest_rows
from idlekv.repair.scoring import score_rows
from idlekv.repair.signals import PauseInputs
from phases.phase07_runtime.tiers import cell, timed
from ruler import generate

TIER = "embedded"


def pause_of(engine: RepairEngine, sample, budget: int):
    """Turn 1 answered, the rule's plan at `budget` applied: the compressed cache and the pause it belongs to."""
    first = engine.turn_one(sample)
    pause = engine.pause_after_turn_one(sample, first, {})
    return pause, engine.compressed(pause, budget).cache


def digest_of(cache, page_rows: int) -> PageDigest:
    """The pages the warm tier would have kept, from its stored keys (one eviction: pages from slot 0)."""
    digest = PageDigest(cache.num_layers, page_rows)
    for layer in range(cache.num_layers):
        digest.add(layer, cache.warm._k[layer].data.to(cache.device, cache.active.dtype), 0)
    return digest


def recall_rows(phase, engine: RepairEngine, done) -> Iterator[dict]:
    """Per sample: the share of each (layer, head)'s exact top-K warm rows and of the needle rows the digest reads."""
    grid = phase.embedded
    for index in range(grid.num_samples):
        first_key = cell("recall", "top_k", tier=TIER, keys_model="real", signal="digest", candidates=grid.length, k=grid.k,
                         page_rows=grid.page_rows[0], kept_fraction=grid.kept_fractions[0], index=index)
        if done(first_key):
            continue
        sample = generate(grid.task, grid.length, index, engine.tokenizer, grid.seed, split="clean", recency_window=64)
        pause, comp = pause_of(engine, sample, grid.budget)
        queries, _, _ = PauseInputs(engine.model, comp, pause.turn_ids).forward(pause.turn_ids)
        exact = score_rows(comp, queries)
        top = [w.topk(grid.k, dim=-1).indices for w in exact.warm]
        needles = torch.zeros(comp.seen_tokens, dtype=torch.bool)
        for start, end in turn_spans(sample, engine.config.turn, "answer"):
            needles[start:end] = True
        for page_rows in grid.page_rows:
            comp.warm.digest = digest_of(comp, page_rows)
            for fraction in grid.kept_fractions:
                rows = digest_rows(comp, queries, DigestOptions(page_rows, 1, fraction))
                read = [w > 0 for w in rows.warm]
                top_hits = torch.cat([torch.gather(r, 1, t).flatten() for r, t in zip(read, top)]).float()
                wanted = [needles[p.cpu()] for p in exact.warm_positions]
                needle_hits = torch.cat([r.cpu()[w] for r, w in zip(read, wanted)]).float()
                keys = dict(tier=TIER, keys_model="real", signal="digest", candidates=grid.length, k=grid.k, page_rows=page_rows,
                            kept_fraction=fraction, index=index)
                yield {**cell("recall", "top_k", **keys), "value": float(top_hits.mean())}
                if needle_hits.numel():  # a needle the rule kept whole has no warm row to read
                    yield {**cell("recall", "needles", **keys), "value": float(needle_hits.mean())}


def reprefill_rows(phase, engine: RepairEngine, device: str, done) -> Iterator[dict]:
    """The repair of one long sample (the next turn's signal, IdleKV's selection, the promotion of K rows)
    against re-prefilling its prompt, `reps` times each on this device."""
    grid = phase.reprefill
    sample = generate(grid.task, grid.length, 0, engine.tokenizer, grid.seed, split="clean", recency_window=64)
    prompt = engine.rows_of(sample).prompt
    keys = dict(tier=TIER, candidates=len(prompt), k=grid.k)
    for rep in range(grid.reps):
        row = cell("reprefill", "prefill", index=rep, **keys)
        if not done(row):
            yield {**row, "value": timed(lambda: prefill(engine.model, prompt), device)[0]}
    pause, comp = pause_of(engine, sample, grid.budget)
    for cond in engine.config.conditions:
        for rep in range(grid.reps):
            row = cell("reprefill", "repair", signal=cond.signal, index=rep, **keys)
            if done(row):
                continue
            signals = engine.signals(comp, pause.turn_ids, None, None, {cond.signal})
            _, select_s, promote_s = engine.repair(cond, comp, grid.k, pause.first.context_length, signals, sample, grid.budget)
            score_s = signals[cond.signal].seconds
            yield {**row, "value": score_s + select_s + promote_s, "score_s": score_s, "select_s": select_s, "promote_s": promote_s}
