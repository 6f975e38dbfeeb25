"""The repair engine on a random tiny model: structure, budgets, bytes, batching."""

import pytest
import torch

from idlekv.cache import TieredCache
from idlekv.embedded.tokenizer import build_tokenizer
from idlekv.engine import EngineConfig, RepairEngine
from idlekv.generation import resume_batch, stop_token_ids
from idlekv.repair.conditions import Condition
from idlekv.repair.scoring import score_rows
from idlekv.retention import SnapKV
from idlekv.tiny_models import build_tiny_model
from ruler import generate

B, KS = 80, (8, 40)


@pytest.fixture(scope="module")
def setup():
    tok = build_tokenizer()
    model = build_tiny_model("qwen2", vocab_size=len(tok), max_position_embeddings=2048)
    sample = generate("mq_niah_4q_embedded", 640, 1, tok)
    engine = RepairEngine(model, tok, SnapKV(sinks=4, recent=16), EngineConfig(budgets=[B], ks=KS, max_new_tokens=5))
    return tok, model, sample, engine


@pytest.fixture(scope="module")
def rows(setup):
    tok, model, sample, engine = setup
    calls = []
    hook = model.register_forward_pre_hook(lambda m, a, kw: calls.append((a[0] if a else kw["input_ids"]).shape), with_kwargs=True)
    try:
        result = engine.run_sample(sample, {"task": "mq"})
    finally:
        hook.remove()
    return result, calls


def by(rows, name, k):
    return next(r for r in rows if r["condition"] == name and r["K"] == k)


def test_every_condition_of_every_cell_is_reported(rows):
    result, _ = rows
    names = {r["condition"] for r in result}
    assert names == {"Full", "Matched", "IdleKV", "Coverage", "Random-K", "Oldest-K", "SpanRef-K", "Refresh-buffered"}
    assert len(result) == 8 * len(KS)
    assert sorted((r["condition"], r["K"]) for r in result) == sorted({(r["condition"], r["K"]) for r in result})


def test_conditions_share_one_prefill(rows, setup):
    _, _, sample, _ = setup
    _, calls = rows
    prompt_forwards = [c for c in calls if c[1] >= sample.prompt_tokens]
    assert len(prompt_forwards) == 1
    multi = [c for c in calls if c[1] > 1]
    # prefill, turn 1, one next-turn signal per B, Full's resume, one batched resume for all K
    assert len(multi) == 1 + 1 + 1 + 1 + 1
    assert sorted(c[0] for c in multi)[-1] == 7 * len(KS)  # the non-Full conditions of every K in one batch


def test_every_resumed_condition_holds_b_plus_k_rows_and_bytes(rows, setup):
    result, _ = rows
    _, model, _, _ = setup
    cfg = model.config
    row_bytes = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * (cfg.hidden_size // cfg.num_attention_heads) * 4
    for r in result:
        if r["condition"] == "Full":
            assert r["active_rows"] == r["context_tokens"] + r["tail_rows"]
        else:
            assert r["active_rows"] == B + r["K"] + r["tail_rows"]
        assert r["active_bytes"] == r["active_rows"] * row_bytes


def test_matched_is_the_rule_at_b_plus_k(setup, rows):
    """The engine's Matched (B + the rule's next K rows from the warm tier) == compressing the full cache at B+K."""
    tok, model, sample, engine = setup
    first = engine.turn_one(sample)
    root, n_ctx = first.root, first.context_length
    scores = engine.rule.score(first.rule_inputs())
    matched = root.fork()
    matched.compress(engine.keep(scores, B + 40, root, n_ctx))
    direct = engine.rule.select(scores, B + 40)
    comp = root.fork()
    comp.compress(engine.keep(scores, B, root, n_ctx), reserve=40)
    signals = engine.signals(comp, [], None, scores, {"rule"})
    cond = next(c for c in engine.config.conditions if c.name == "Matched")
    repaired, _, _ = engine.repair(cond, comp, 40, n_ctx, signals, sample, B)
    for layer in range(root.num_layers):
        for cache in (matched, repaired):
            context = cache.active.positions(layer)[0]
            context = context[context < n_ctx].view(direct.shape[1], -1)
            assert torch.equal(context.sort(-1).values, direct[layer])
    assert by(rows[0], "Matched", 40)["active_rows"] == B + 40 + by(rows[0], "Matched", 40)["tail_rows"]


def test_span_ref_restores_the_next_turn_needles_when_k_allows(rows, setup):
    result, _ = rows
    _, _, sample, _ = setup
    span_rows = sum(n.token_end - n.token_start for n in sample.needles_for_turn(1))
    assert span_rows <= 40
    assert by(result, "SpanRef-K", 40)["needle_rows_active"] == 1.0


def test_refresh_reselects_b_plus_k_rows_with_its_selector(setup):
    """Refresh keeps B+K context rows per head: the rule's sinks and recent window, then the
    selector's order over every context row (a burst selector brings each anchor's neighbours)."""
    from idlekv.engine import rank_scores

    tok, model, sample, engine = setup
    first = engine.turn_one(sample)
    root, n_ctx = first.root, first.context_length
    comp = root.fork()
    comp.compress(engine.keep(engine.rule.score(first.rule_inputs()), B, root, n_ctx), reserve=40)
    signals = engine.signals(comp, first.turn_ids[1], None, None, {"exact"})
    for cond in (Condition("R", "refresh", "exact", "topk_burst"), Condition("R", "refresh", "exact")):
        cache, _ = engine.refresh(cond, root, signals, B + 40, n_ctx, sample)
        for layer in range(root.num_layers):
            context = cache.active.positions(layer)[0]
            context = context[context < n_ctx].view(root.active.kv_heads, -1)
            assert context.shape[1] == B + 40 and all(row.unique().numel() == B + 40 for row in context)
            assert set(range(4)) <= set(context[0].tolist()) and set(range(n_ctx - 16, n_ctx)) <= set(context[0].tolist())
    # the burst order: the best anchor's whole window [a-2, a+20] comes first
    scores = torch.zeros(100)
    scores[50] = 1.0
    order = engine.selectors["IdleKV"].order(scores, torch.ones(100, dtype=torch.bool), 1)
    ranked = rank_scores(order)
    assert set(ranked.argsort(descending=True)[:23].tolist()) == set(range(48, 71))
    with pytest.raises(ValueError, match="signal"):
        Condition("R", "refresh")


def compressed_forks(engine, sample, sizes, seed):
    """Forks of the sample's post-turn-1 cache, each keeping `size` random context rows + the tail."""
    first = engine.turn_one(sample)
    root, n_ctx = first.root, first.context_length
    gen = torch.Generator().manual_seed(seed)
    caches = []
    for size in sizes:
        c = root.fork()
        c.compress(torch.cat([torch.randperm(n_ctx, generator=gen)[:size].sort().values, torch.arange(n_ctx, root.rows)]))
        caches.append(c)
    return caches


def test_batched_resume_equals_one_at_a_time(setup):
    tok, model, sample, engine = setup
    caches = compressed_forks(engine, sample, (60, 60, 60), seed=0)
    turn = tok("What are all the special magic numbers for oak?", add_special_tokens=False)["input_ids"]
    stop = stop_token_ids(tok)
    together = resume_batch(model, caches, turn, 6, stop)
    alone = [resume_batch(model, [c], turn, 6, stop)[0] for c in caches]
    assert together == alone


@pytest.mark.parametrize("dropped", [False, True])  # every warm slot present (sliced) / some dropped (gathered)
def test_exact_scores_stream_in_chunks_and_match_a_direct_softmax(dropped):
    gen = torch.Generator().manual_seed(0)
    keys = [torch.randn(1, 2, 50, 8, generator=gen) for _ in range(2)]
    cache = TieredCache.from_tensors(keys, [k.clone() for k in keys])
    cache.compress(torch.arange(0, 50, 3))
    if dropped:
        cache.drop_warm([torch.tensor([[1, 5], [2, 9]])] * 2)
    queries = [torch.randn(4, 5, 8, generator=gen) for _ in range(2)]
    chunked, whole = score_rows(cache, queries, chunk_rows=7), score_rows(cache, queries, chunk_rows=10_000)
    recomputed = score_rows(cache, queries, chunk_rows=7, max_logit_bytes=0)  # chunk logits recomputed, not kept
    layer = 1
    _, positions = cache.warm.candidates(layer)
    expected, expected_active = direct_scores(cache, queries, layer)
    for scores in (whole, chunked, recomputed):
        assert torch.allclose(scores.warm[layer], expected, atol=1e-6)
        assert torch.allclose(scores.active[layer], expected_active, atol=1e-6)
    assert torch.equal(whole.warm_positions[layer], positions[0])


def direct_scores(cache, queries, layer):
    """The exact signal by its definition, in float64: (warm, active) scores per KV head."""
    slots, _ = cache.warm.candidates(layer)
    d = queries[layer].shape[-1]
    warm = torch.gather(cache.warm._k[layer].data[0], 1, slots[0][..., None].expand(-1, -1, d))
    all_keys = torch.cat([cache.active.keys(layer)[0], warm], dim=1).double()
    heads = all_keys.shape[0]
    q = queries[layer].double().view(heads, -1, queries[layer].shape[1], d)
    probs = torch.softmax(q @ all_keys[:, None].transpose(-1, -2) / d**0.5, dim=-1)  # (kv, group, T, rows)
    per_row = probs.amax(dim=2).mean(dim=1).float()
    return per_row[:, cache.rows :], per_row[:, : cache.rows]


def test_exact_scores_survive_a_warm_logit_far_above_every_active_one():
    # The running normaliser shifts each chunk; a warm row 200 (natural units) above every
    # active logit would overflow exp2 there, so that chunk takes its own max.
    gen = torch.Generator().manual_seed(1)
    keys = [torch.randn(1, 2, 40, 8, generator=gen)]
    queries = [torch.randn(2, 3, 8, generator=gen)]
    keys[0][0, :, 30] = queries[0][:, 0] * (200 * 8**0.5 / queries[0][:, 0].pow(2).sum(-1, keepdim=True))
    cache = TieredCache.from_tensors(keys, [k.clone() for k in keys])
    cache.compress(torch.arange(0, 20))
    scores = score_rows(cache, queries, chunk_rows=4)
    expected, expected_active = direct_scores(cache, queries, 0)
    assert torch.isfinite(scores.warm[0]).all()
    assert torch.allclose(scores.warm[0], expected, atol=1e-6)
    assert torch.allclose(scores.active[0], expected_active, atol=1e-6)


def test_exact_scores_of_a_bf16_cache_match_the_float64_definition():
    gen = torch.Generator().manual_seed(2)
    keys = [torch.randn(1, 2, 300, 16, generator=gen).bfloat16()]
    queries = [(torch.randn(4, 6, 16, generator=gen) * 2).bfloat16()]
    cache = TieredCache.from_tensors(keys, [k.clone() for k in keys])
    cache.compress(torch.arange(0, 300, 5))
    scores = score_rows(cache, queries, chunk_rows=64)
    expected, _ = direct_scores(cache, queries, 0)
    assert scores.warm[0].dtype == torch.float32
    # bf16 logits (8 bits of mantissa) bound the agreement, not the fp32 softmax
    assert (scores.warm[0] - expected).abs().max() <= 0.02 * expected.abs().max()


def test_conditions_are_validated():
    with pytest.raises(ValueError, match="needs a selector"):
        Condition("x", "repair", "exact")
    with pytest.raises(ValueError, match="kind"):
        Condition("x", "magic")
    with pytest.raises(ValueError, match="anchors"):
        Condition("x", "repair", "exact", "topk_burst", anchors="some")
    for wrong in (dict(selector="coverage"), dict(signal="rule", selector="topk_burst")):
        with pytest.raises(ValueError, match="anchors='all'"):
            Condition("x", "repair", **{"signal": "exact", **wrong}, anchors="all")


def compressed_with_signal(engine, sample, signal):
    """(root, context length, the cache compressed to B with room for 40, {signal: ...})."""
    first = engine.turn_one(sample)
    root, n_ctx = first.root, first.context_length
    scores = engine.rule.score(first.rule_inputs())
    comp = root.fork()
    comp.compress(engine.keep(scores, B, root, n_ctx), reserve=40)
    return root, n_ctx, comp, engine.signals(comp, first.turn_ids[1], None, scores, {signal})


def test_active_anchored_idlekv_promotes_exactly_k_warm_rows(setup):
    _, _, sample, engine = setup
    root, n_ctx, comp, signals = compressed_with_signal(engine, sample, "exact")
    for granularity in ("shared", "head"):
        cond = Condition("IdleKV", "repair", "exact", "topk_burst", granularity=granularity, anchors="all")
        repaired, _, _ = engine.repair(cond, comp, 40, n_ctx, signals, sample, B)
        for layer in range(root.num_layers):
            before, after = comp.active.positions(layer)[0], repaired.active.positions(layer)[0]
            for head in range(root.active.kv_heads):
                added = set(after[head].tolist()) - set(before[head].tolist())
                assert set(before[head].tolist()) <= set(after[head].tolist())
                assert len(added) == 40 and max(added) < n_ctx and after[head].unique().numel() == after.shape[1]


def test_padded_batches_of_different_sizes_equal_one_at_a_time(setup):
    tok, model, sample, engine = setup
    caches = compressed_forks(engine, sample, (40, 90, 65), seed=1)
    turn = tok("What are all the special magic numbers for oak?", add_special_tokens=False)["input_ids"]
    stop = stop_token_ids(tok)
    assert resume_batch(model, caches, turn, 8, stop) == [resume_batch(model, [c], turn, 8, stop)[0] for c in caches]


def test_the_reference_protocol_baseline_runs_every_cell(setup):
    """make bench-repair's baseline (idlekv/bench/reference_protocol.py) uses the engine's
    own selection code: it must keep up with the engine's signatures."""
    from idlekv.bench.reference_protocol import run_reference_sample

    _, _, sample, engine = setup
    seconds, cells = run_reference_sample(engine, sample)
    assert cells == len(engine.config.conditions) * len(KS) and seconds > 0


def test_unit_scores_of_a_signal_are_computed_once_per_granularity(setup):
    """Every K of a B reuses them; 'context' covers every context row, 'warm' only evicted ones."""
    from idlekv.repair.granularity import unit_scores

    _, _, sample, engine = setup
    _, n_ctx, _, signals = compressed_with_signal(engine, sample, "exact")
    rs = signals["exact"].scores
    warm = rs.units(n_ctx, "shared")
    assert rs.units(n_ctx, "shared") is warm and rs.units(n_ctx, "head") is not warm
    assert torch.equal(warm.nan_to_num(-1), unit_scores(rs.warm, rs.warm_positions, n_ctx, "shared").nan_to_num(-1))
    context = rs.units(n_ctx, "shared", rows="context")
    assert not context.isnan().any() and context.shape == (1, n_ctx)
    kept_everywhere = warm[0].isnan()  # rows no head evicted (the sinks, the recent window): only in the context units
    assert kept_everywhere[:4].all() and kept_everywhere[n_ctx - 16 :].all() and not kept_everywhere.all()
    with pytest.raises(ValueError, match="rows"):
        rs.units(n_ctx, "shared", rows="tail")


def test_every_budget_resumes_in_one_batch_unless_the_rows_bound_splits_it(setup, monkeypatch):
    import idlekv.engine as protocol

    tok, model, sample, _ = setup
    batches = []

    def recording(model_, caches, *args):
        batches.append(len(caches))
        return resume_batch(model_, caches, *args)

    monkeypatch.setattr(protocol, "resume_batch", recording)
    results = {}
    for bound in (131072, 400):  # 400 rows: about three caches per batch
        batches.clear()
        engine = RepairEngine(model, tok, SnapKV(sinks=4, recent=16),
                              EngineConfig(budgets=[60, B], ks=KS, max_new_tokens=4, resume_batch_rows=bound))
        rows = engine.run_sample(sample)
        results[bound] = sorted((r["condition"], r["B"], r["K"], r["answer"]) for r in rows)
        repaired = 7 * 2 * len(KS)
        assert len(rows) == 8 * 2 * len(KS) and sum(batches) == 1 + repaired  # Full once, then every repaired cell once
        if bound == 131072:
            assert sorted(batches) == [1, repaired]
        else:
            assert max(batches) <= 3 and len(batches) > 3
    assert results[131072] == results[400]  # how the cells are batched changes no answer


def test_orders_that_do_not_depend_on_k_are_computed_once_per_compressed_cache(setup, monkeypatch):
    _, _, sample, engine = setup
    root, n_ctx, comp, signals = compressed_with_signal(engine, sample, "rule")
    for cond in (Condition("Matched", "repair", "rule", "topk", granularity="head"), Condition("Oldest-K", "repair", None, "oldest")):
        selector, calls = engine.selector(cond), []
        order = selector.order
        monkeypatch.setattr(selector, "order", lambda *a, **kw: calls.append(1) or order(*a, **kw))
        memo = {}
        for k in KS:
            shared, _, _ = engine.repair(cond, comp, k, n_ctx, signals, sample, B, memo)
            alone, _, _ = engine.repair(cond, comp, k, n_ctx, signals, sample, B)
            for layer in range(root.num_layers):
                assert torch.equal(shared.active.positions(layer), alone.active.positions(layer))
        units = 1 if cond.granularity == "shared" else root.num_layers * root.active.kv_heads
        assert len(calls) == units * (1 + len(KS))  # once for the memo, once per K without it
