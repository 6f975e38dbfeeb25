"""phase07's measurements on Qwen2.5-7B-shaped synthetic tiers: latency per stage vs warm candidates,
the copy floors, and the digest's recall of the exact top-K rows (idlekv/bench/synthetic_tiers.py).

Every function yields result rows (one value each: a repetition's seconds, a (layer, head)'s recall,
a copy's GB/s) keyed as run.KEY_FIELDS says."""

from __future__ import annotations

import time
from collections.abc import Iterator

import torch

from idlekv.bench.synthetic_tiers import page_digest, promote_bytes, synthetic_pause, warm_key_bytes
from idlekv.bench.timing import synchronize
from idlekv.cache.transfer import TransferPlan, host_empty
from idlekv.repair.digest import DigestOptions, digest_rows
from idlekv.repair.granularity import first_k, rank_heads, unit_scores
from idlekv.repair.scoring import proxy_queries, score_rows
from idlekv.repair.selectors import TopKBurst

TIER = "qwen7b"


def cell(part: str, stage: str, *, tier: str = TIER, keys_model: str = "", signal: str = "", candidates: int = 0, k: int = 0,
         page_rows: int = 0, kept_fraction: float = 0.0, index: int = 0, value: float = 0.0, **extra) -> dict:
    """One result row; fields that do not apply hold "" or 0, so every row has every key."""
    return {"part": part, "tier": tier, "keys_model": keys_model, "signal": signal, "stage": stage, "candidates": candidates,
            "k": k, "page_rows": page_rows, "kept_fraction": kept_fraction, "index": index, "value": value, **extra}


def timed(fn, device: str) -> tuple[float, object]:
    synchronize(device)
    start = time.perf_counter()
    out = fn()
    synchronize(device)
    return time.perf_counter() - start, out


def signal_queries(pause, signal: str) -> list[torch.Tensor]:
    """What each signal multiplies: the next turn's queries, or (proxy) one key-like row per KV head and token."""
    if signal != "proxy":
        return pause.queries
    heads = pause.cache.active.kv_heads
    return proxy_queries([q.view(heads, -1, q.shape[1], q.shape[2])[:, 0][None] for q in pause.queries])


def score(pause, signal: str, options: DigestOptions):
    if signal == "digest":
        return digest_rows(pause.cache, pause.queries, options)
    return score_rows(pause.cache, signal_queries(pause, signal))


def select(scores, k: int, length: int):
    """IdleKV's selection as the engine makes it: one shared ranking, bursts, each head's first K."""
    per_unit = unit_scores(scores.warm, scores.warm_positions, length, "shared")
    order = [TopKBurst(lo=-2, hi=20).order(per_unit[0], ~per_unit[0].isnan(), k)]
    return first_k(rank_heads(order, scores.warm_positions, scores.warm_slots, "shared", length, k), k)


def latency_rows(phase, candidates: int, device: str, done) -> Iterator[dict]:
    """Score (each signal), select and promote (each K) at `candidates` warm rows, `phase.reps` times each."""
    pause = synthetic_pause(candidates, phase.active, phase.tokens, "rope", reserve=max(phase.ks), device=device)
    options = DigestOptions(phase.digest.page_rows, 1, phase.digest.kept_fraction)
    pause.cache.warm.digest = page_digest(pause.cache, options.page_rows)
    length = pause.cache.seen_tokens
    extra = {"warm_key_bytes": warm_key_bytes(pause.cache), "digest_bytes": pause.cache.warm.digest.nbytes}
    exact = None
    for signal in phase.signals:
        digest = signal == "digest"
        keys = dict(keys_model="rope", signal=signal, candidates=candidates, page_rows=options.page_rows if digest else 0,
                    kept_fraction=options.kept_fraction if digest else 0.0)
        for rep in range(phase.reps):
            row = cell("latency", "score", index=rep, **keys)
            if done(row):
                continue
            seconds, scores = timed(lambda: score(pause, signal, options), device)  # noqa: B023
            exact = scores if signal == "exact" else exact
            yield {**row, "value": seconds, **extra}
    exact = exact or score(pause, "exact", options)
    for k in phase.ks:
        for rep in range(phase.reps):
            row = cell("latency", "select", keys_model="rope", signal="exact", candidates=candidates, k=k, index=rep)
            if not done(row):
                yield {**row, "value": timed(lambda: select(exact, k, length), device)[0]}  # noqa: B023
        selection = select(exact, k, length)
        for rep in range(phase.reps):
            row = cell("latency", "promote", keys_model="rope", candidates=candidates, k=k, index=rep)
            if done(row):
                continue
            twin = pause.cache.fork()
            twin.active.own()
            yield {**row, "value": timed(lambda: twin.promote(selection), device)[0], "promote_bytes": promote_bytes(_shape(pause), k)}  # noqa: B023


def _shape(pause):
    from idlekv.bench.synthetic_tiers import Shape

    c = pause.cache.active
    return Shape(layers=c.num_layers, query_heads=pause.queries[0].shape[0], kv_heads=c.kv_heads, head_dim=c.head_dim)


def digest_tradeoff_rows(phase, keys_model: str, device: str, done) -> Iterator[dict]:
    """At the recall grid's candidates: per (P, share of pages read), the digest's recall of each (layer, head)'s
    exact top-K warm rows (and of the planted rows), and its scoring time against the exact signal's."""
    grid = phase.recall
    pause = synthetic_pause(grid.candidates, phase.active, phase.tokens, keys_model, device=device)
    exact_s, exact = timed(lambda: score_rows(pause.cache, pause.queries), device)
    exact_row = cell("latency", "score_tradeoff", keys_model=keys_model, signal="exact", candidates=grid.candidates)
    if not done(exact_row):
        yield {**exact_row, "value": exact_s}
    top = [w.topk(grid.k, dim=-1).indices for w in exact.warm]
    planted = _planted_slots(pause, exact)
    for page_rows in grid.page_rows:
        pause.cache.warm.digest = page_digest(pause.cache, page_rows)
        for fraction in grid.kept_fractions:
            keys = dict(tier=TIER, keys_model=keys_model, signal="digest", candidates=grid.candidates, k=grid.k,
                        page_rows=page_rows, kept_fraction=fraction)
            first = cell("recall", "top_k", index=0, **keys)
            if done(first):
                continue
            options = DigestOptions(page_rows, 1, fraction)
            seconds, rows = timed(lambda: digest_rows(pause.cache, pause.queries, options), device)  # noqa: B023
            read = [w > 0 for w in rows.warm]
            units = [(layer, head) for layer in range(len(read)) for head in range(read[0].shape[0])]
            for i, (layer, head) in enumerate(units):
                hit = read[layer][head]
                yield {**cell("recall", "top_k", index=i, **keys), "value": float(hit[top[layer][head]].float().mean())}
                if planted is not None:
                    yield {**cell("recall", "planted", index=i, **keys), "value": float(hit[planted[layer][head]].float().mean())}
            yield {**cell("latency", "score_tradeoff", index=0, **keys), "value": seconds}


def _planted_slots(pause, exact) -> list[torch.Tensor] | None:
    """Per (layer, head), the warm columns of the planted rows (`rope` keys), else None."""
    if not pause.spans.numel():
        return None
    out = []
    for positions in exact.warm_positions:
        inside = ((positions[..., None] >= pause.spans[:, 0].to(positions.device))
                  & (positions[..., None] < pause.spans[:, 1].to(positions.device))).any(-1)
        out.append([torch.nonzero(inside[h]).flatten() for h in range(inside.shape[0])])
    return out


def floor_rows(phase, device: str, done) -> Iterator[dict]:
    """The copy rates the floors divide by, in the same run: a large memcpy on the device (what reading the warm
    keys or moving promoted rows costs at best on a CPU) and, on CUDA, pinned host->device."""
    nbytes = phase.floor_bytes
    src = torch.empty(nbytes, dtype=torch.uint8, device=device).fill_(1)
    dst = torch.empty_like(src)
    pinned = host_empty(nbytes, torch.uint8, TransferPlan.for_device(device)).fill_(1) if device == "cuda" else None
    dst.copy_(src)  # the destination's first touch (page faults) is not a copy rate
    for rep in range(phase.reps):
        row = cell("floor", "memcpy", tier=device, index=rep)
        if not done(row):
            yield {**row, "value": nbytes / timed(lambda: dst.copy_(src), device)[0] / 1e9}
        if pinned is not None:
            row = cell("floor", "h2d_pinned", tier=device, index=rep)
            if not done(row):
                yield {**row, "value": nbytes / timed(lambda: dst.copy_(pinned, non_blocking=True), device)[0] / 1e9}
