"""Selectors return exactly K distinct warm rows per head, never an active one."""

import pytest
import torch

from idlekv.cache import TieredCache
from idlekv.repair.granularity import first_k, rank_heads, take_first_k, unit_of, unit_scores
from idlekv.repair.selectors import SELECTORS, Coverage, SpanRefK, TopKBurst, build_selector

N, HEADS, LAYERS = 64, 2, 3


def compressed_cache(seed=0):
    gen = torch.Generator().manual_seed(seed)
    keys = [torch.randn(1, HEADS, N, 8, generator=gen) for _ in range(LAYERS)]
    cache = TieredCache.from_tensors(keys, [k.clone() for k in keys])
    keep = [torch.stack([torch.randperm(N, generator=gen)[:20] for _ in range(HEADS)]) for _ in range(LAYERS)]
    cache.compress(keep, reserve=16)
    return cache


def select(cache, selector, k, granularity, values=None, **kw):
    cands = [cache.warm.candidates(layer) for layer in range(LAYERS)]
    slots, positions = [c[0][0] for c in cands], [c[1][0] for c in cands]
    values = values or [torch.rand(p.shape, generator=torch.Generator().manual_seed(layer)) for layer, p in enumerate(positions)]
    per_unit = unit_scores(values, positions, N, granularity)
    orders = [selector.order(per_unit[u], ~per_unit[u].isnan(), k, **kw) for u in range(per_unit.shape[0])]
    return take_first_k(orders, positions, slots, k, granularity, N)


@pytest.mark.parametrize("granularity", ["shared", "layer", "head"])
@pytest.mark.parametrize("name", sorted(SELECTORS))
def test_exactly_k_distinct_warm_rows(name, granularity):
    cache = compressed_cache()
    selection = select(cache, build_selector(name), 16, granularity, spans=[(30, 36)])
    for layer, idx in enumerate(selection):
        assert idx.shape == (1, HEADS, 16)
        for head in range(HEADS):
            slots = idx[0, head]
            assert len(set(slots.tolist())) == 16
        warm_positions = cache.warm.positions(layer)[0]
        active_positions = cache.active.positions(layer)[0]
        chosen = torch.gather(warm_positions, 1, idx[0])
        for head in range(HEADS):
            assert not set(chosen[head].tolist()) & set(active_positions[head].tolist())
    cache.promote(selection)
    assert cache.rows == 36 and cache.warm.rows == N - 36


@pytest.mark.parametrize("granularity", ["shared", "layer", "head"])
def test_one_ranking_serves_every_k_as_each_heads_first_k_rows_in_its_units_order(granularity):
    """rank_heads once, then first_k per K: each head's own warm rows, in its unit's order."""
    cache = compressed_cache()
    cands = [cache.warm.candidates(layer) for layer in range(LAYERS)]
    slots, positions = [c[0][0] for c in cands], [c[1][0] for c in cands]
    per_unit = unit_scores([torch.rand(p.shape) for p in positions], positions, N, granularity)
    orders = [build_selector("topk").order(per_unit[u], ~per_unit[u].isnan(), 0) for u in range(per_unit.shape[0])]
    ranked = rank_heads(orders, positions, slots, granularity, N)
    for k in (1, 7, 16, N - 20):
        for layer, idx in enumerate(first_k(ranked, k)):
            for head in range(HEADS):
                order = orders[unit_of(layer, head, HEADS, granularity)].tolist()
                held = dict(zip(positions[layer][head].tolist(), slots[layer][head].tolist()))
                expected = [held[p] for p in order if p in held][:k]
                assert idx[0, head].tolist() == expected
            assert torch.equal(idx, take_first_k(orders, positions, slots, k, granularity, N)[layer])  # its top-k path
    with pytest.raises(ValueError, match="cannot promote 45 rows"):
        first_k(ranked, N - 19)


def test_too_large_a_k_is_refused():
    with pytest.raises(ValueError, match="cannot promote 50 rows"):
        select(compressed_cache(), TopKBurst(), 50, "shared")


@pytest.mark.parametrize("granularity", ["shared", "layer", "head"])
def test_active_anchored_bursts_bring_exactly_k_distinct_warm_rows(granularity):
    """anchor_scores rank every row, active ones too; the bursts still bring only warm rows."""
    cache = compressed_cache()
    anchor = torch.rand(N, generator=torch.Generator().manual_seed(3))
    cands = [cache.warm.candidates(layer) for layer in range(LAYERS)]
    slots, positions = [c[0][0] for c in cands], [c[1][0] for c in cands]
    per_unit = unit_scores([torch.rand(p.shape) for p in positions], positions, N, granularity)
    orders = [TopKBurst(-1, 3).order(per_unit[u], ~per_unit[u].isnan(), 16, anchor_scores=anchor) for u in range(per_unit.shape[0])]
    selection = take_first_k(orders, positions, slots, 16, granularity, N)
    for layer, idx in enumerate(selection):
        chosen = torch.gather(cache.warm.positions(layer)[0], 1, idx[0])
        active = cache.active.positions(layer)[0]
        for head in range(HEADS):
            assert len(set(chosen[head].tolist())) == 16
            assert not set(chosen[head].tolist()) & set(active[head].tolist())


def test_an_active_anchor_fills_the_evicted_rows_around_it():
    """A kept row the next turn attends to most (a needle kept with holes) anchors the burst;
    warm-only anchors would start from the best evicted row instead."""
    candidates = torch.ones(100, dtype=torch.bool)
    candidates[[50, 52, 54]] = False  # kept by the rule; 51 and 53 were evicted
    warm = torch.zeros(100)
    warm[80] = 0.5  # the best evicted row, elsewhere
    anchor = warm.clone()
    anchor[50] = 1.0  # the best row of all is active
    burst = TopKBurst(0, 4)
    assert burst.order(warm, candidates, 2, anchor_scores=anchor)[:2].tolist() == [51, 53]
    assert burst.order(warm, candidates, 2)[:2].tolist() == [80, 81]


def test_burst_brings_the_anchor_neighbourhood():
    scores = torch.zeros(100)
    scores[50] = 1.0
    order = TopKBurst(-2, 20).order(scores, torch.ones(100, dtype=torch.bool), 23)
    assert order[:23].tolist() == list(range(48, 71))


def test_coverage_prefers_the_densest_window():
    scores = torch.zeros(100)
    scores[10] = 3.0  # one sharp peak
    scores[60:70] = 1.0  # a broad region: more mass in one window
    order = Coverage(width=10).order(scores, torch.ones(100, dtype=torch.bool), 10)
    assert sorted(order[:10].tolist()) == list(range(60, 70))


def test_span_ref_restores_the_annotated_spans():
    candidates = torch.ones(100, dtype=torch.bool)
    order = SpanRefK(part="sentence").order(torch.zeros(100), candidates, 12, spans=[(40, 45), (80, 87)])
    assert set(order[:12].tolist()) == set(range(40, 45)) | set(range(80, 87))
    order = SpanRefK(part="sentence").order(torch.zeros(100), candidates, 6, spans=[(40, 45), (80, 87)])
    assert set(order[:5].tolist()) == set(range(40, 45))  # only whole spans that fit; then nearest rows
    assert 80 <= order[5].item() < 87  # then the rest of a span that did not fit whole (distance 0)


def test_spanref_costs_the_answer_spans_by_default():
    candidates = torch.ones(60, dtype=torch.bool)
    sentences, answers = [(10, 24), (40, 54)], [(20, 24), (50, 54)]
    order = SpanRefK().order(torch.zeros(60), candidates, 8, spans=sentences, answer_spans=answers)
    assert sorted(order[:8].tolist()) == [20, 21, 22, 23, 50, 51, 52, 53]
    sentence = SpanRefK(part="sentence").order(torch.zeros(60), candidates, 14, spans=sentences, answer_spans=answers)
    assert sorted(sentence[:14].tolist()) == list(range(10, 24))
