"""The reference implementation's protocol shape, rebuilt on our cache, as a benchmark baseline.

What the reference does per (B, K) cell and condition (REFERENCE.md section 1): its own
next-turn prefill over the compressed cache and exact scoring on the CPU in fp32 (keys
concatenated, repeated per query head, full softmax) for every condition that uses the
signal; selection; a re-sort of the whole cache by position; then its own next-turn
prefill and a token-by-token decode at batch size 1. Our selection code and caches are
reused, so the measured difference is the protocol's structure and the scoring path.
"""

from __future__ import annotations

import time

import torch

from idlekv.attention import capture_queries
from idlekv.cache import TieredCache
from idlekv.cache.quant import QuantizedRows, dequantize
from idlekv.cache.selection import gather_rows
from idlekv.engine import RepairEngine
from idlekv.generation import resume_batch
from idlekv.models import with_cache
from idlekv.repair.scoring import RowScores
from idlekv.repair.signals import Signal


def reference_exact_scores(cache: TieredCache, queries: list[torch.Tensor]) -> RowScores:
    """The reference's scorer: everything on the CPU in fp32, keys repeated per query head."""
    out = RowScores([], [], [], [], [])
    for layer in range(cache.num_layers):
        q = queries[layer].detach().cpu().float()
        active = cache.active.keys(layer)[0].detach().cpu()
        slots, positions = cache.warm.candidates(layer)
        stored = cache.warm._k[layer]
        scale = None if stored.scale is None else gather_rows(stored.scale, slots)
        warm = dequantize(QuantizedRows(gather_rows(stored.data, slots), scale), torch.float32)[0]
        keys = torch.cat([active.float(), warm], dim=1)
        group = q.shape[0] // keys.shape[0]
        keys = keys.repeat_interleave(group, dim=0)  # repeat_kv: one copy of the keys per query head
        probs = torch.softmax(q @ keys.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)
        per_head = probs.amax(dim=1).view(keys.shape[0] // group, group, -1).mean(dim=1)
        out.warm.append(per_head[:, active.shape[1]:])
        out.warm_positions.append(positions[0])
        out.warm_slots.append(slots[0])
        out.active.append(per_head[:, : active.shape[1]])
        out.active_positions.append(cache.active.positions(layer)[0].cpu())
    return out


def resort(cache: TieredCache) -> None:
    """The reference re-sorted the whole cache by position after every promotion."""
    cache.active.own()
    for layer in range(cache.num_layers):
        o = cache.active.positions(layer)[0].argsort(dim=-1)[None]
        for buf in (cache.active._k[layer], cache.active._v[layer]):
            rows = buf[:, :, : cache.rows]
            rows.copy_(torch.gather(rows, 2, o[..., None].expand(-1, -1, -1, rows.shape[-1])))
        pos = cache.active._p[layer][:, :, : cache.rows]
        pos.copy_(torch.gather(pos, 2, o))


@torch.no_grad()
def run_reference_sample(engine: RepairEngine, sample) -> tuple[float, int]:
    """(seconds, cells) for one sample under the reference protocol."""
    cfg, model = engine.config, engine.model
    start = time.perf_counter()
    first = engine.turn_one(sample)
    root, n_ctx, stale_q = first.root, first.context_length, first.question_queries
    turn_ids, max_new = first.turn_ids[cfg.turn], first.max_new_tokens[cfg.turn]
    scores = engine.rule.score(first.rule_inputs()).cpu()
    cells = 0

    def decode_alone(cache):  # batch 1, token by token
        resume_batch(model, [cache], turn_ids, max_new, engine.stop_ids)

    decode_alone(root.fork())  # Full, once per sample
    for b in cfg.budgets:
        comp = root.fork()
        comp.compress(engine.keep(scores, b, root, n_ctx), reserve=max(cfg.ks))
        for k in cfg.ks:
            for cond in cfg.conditions:
                cells += 1
                if cond.kind == "full":
                    continue
                signals = engine.signals(comp, turn_ids, stale_q, scores, {"rule"}) if cond.signal == "rule" else {}
                if cond.signal in ("exact", "proxy") or cond.kind == "refresh":
                    probe = comp.fork()
                    hf = probe.to_hf()  # the reference copies the cache for its scoring prefill
                    with capture_queries(model) as cap:
                        model(torch.tensor([turn_ids], device=comp.active.device), **with_cache(model, hf),
                              position_ids=probe.position_ids(len(turn_ids)), use_cache=True, logits_to_keep=1)
                    signals["exact"] = signals["proxy"] = Signal(reference_exact_scores(comp, [cap.queries[i][0] for i in range(comp.num_layers)]), 0.0)
                elif cond.signal == "stale":
                    signals["stale"] = Signal(reference_exact_scores(comp, stale_q), 0.0)
                if cond.signal == "rule":  # the reference recompressed the full cache at B+K
                    cache = root.fork()
                    cache.compress(engine.keep(scores, b + k, root, n_ctx))
                elif cond.kind == "repair":
                    cache, _, _ = engine.repair(cond, comp, k, n_ctx, signals, sample, b)
                    resort(cache)
                else:
                    cache, _ = engine.refresh(cond, root, signals, b + k, n_ctx, sample)
                decode_alone(cache)
    return time.perf_counter() - start, cells
