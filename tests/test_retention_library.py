"""Every registered rule through compress + continue on tiny models of each family, and each
rule's behaviour pinned on a constructed case."""

import pytest
import torch

from idlekv.attention import capture_queries
from idlekv.cache import TieredCache
from idlekv.retention import (
    H2O,
    RULES,
    TOVA,
    KeyDiff,
    Knorm,
    KVMirrorHybrid,
    RandomRule,
    RecentWindow,
    RetentionInputs,
    Scissorhands,
    SnapKV,
    StreamingLLM,
    build_rule,
)
from tests.reference_attention import masked_rows

CONTEXT, WINDOW, BUDGET, SINKS, RECENT = 40, 6, 16, 2, 4


def turn_one_inputs(model, ids):
    """Prefill the context (capturing every query), then the window tokens (capturing theirs)."""
    with capture_queries(model) as pre, torch.no_grad():
        past = model(ids[:, :CONTEXT], use_cache=True).past_key_values
    with capture_queries(model) as win, torch.no_grad():
        past = model(ids[:, CONTEXT : CONTEXT + WINDOW], past_key_values=past, use_cache=True).past_key_values
    cache = TieredCache.from_hf(past)
    layers = cache.num_layers
    return cache, RetentionInputs([cache.active.keys(i)[0] for i in range(layers)], [cache.active.positions(i)[0] for i in range(layers)],
                                  [win.queries[i][0] for i in range(layers)], torch.arange(CONTEXT, CONTEXT + WINDOW), CONTEXT,
                                  [pre.queries[i][0] for i in range(layers)])


def random_probe(model, path):
    """A probe with random weights of the model's shape (the rule's mechanics, not its training)."""
    from idlekv.retention.probe import STAT_FEATURES, ProbeWeights

    layers, d = model.config.num_hidden_layers, model.config.head_dim if getattr(model.config, "head_dim", None) else model.config.hidden_size // model.config.num_attention_heads
    gen = torch.Generator().manual_seed(0)
    f = d + len(STAT_FEATURES)
    return ProbeWeights(torch.randn(layers, f, generator=gen), torch.zeros(layers), torch.zeros(layers, f), torch.ones(layers, f)).save(path)


def make_rule(name, model, tmp_path, **options):
    if name == "learned_relevance":
        options["path"] = str(random_probe(model, tmp_path / "probe.pt"))
    return build_rule(name, **options)


@pytest.mark.parametrize("name", sorted(set(RULES) - {"keep_all"}))
def test_every_rule_compresses_and_continues(tiny_model, token_ids, name, tmp_path):
    cache, x = turn_one_inputs(tiny_model, token_ids)
    rule = make_rule(name, tiny_model, tmp_path, sinks=SINKS, recent=RECENT)
    scores = rule.score(x)
    assert scores.shape == (cache.num_layers, tiny_model.config.num_key_value_heads, CONTEXT)
    assert torch.isfinite(scores).all()
    assert torch.equal(rule.score(x), scores)  # deterministic
    keep = rule.keep(x, BUDGET)
    for row in keep.reshape(-1, BUDGET):
        kept = set(row.tolist())
        assert len(kept) == BUDGET and set(range(SINKS)) | set(range(CONTEXT - RECENT, CONTEXT)) <= kept
    tail = torch.arange(CONTEXT, CONTEXT + WINDOW).expand(keep.shape[1], -1)
    cache.compress([torch.cat([keep[layer], tail], dim=-1) for layer in range(cache.num_layers)])
    assert cache.rows == BUDGET + WINDOW
    new = token_ids[:, CONTEXT + WINDOW : CONTEXT + WINDOW + 2]
    with torch.no_grad():
        logits = tiny_model(new, past_key_values=cache.to_hf(), position_ids=cache.position_ids(new.shape[1])).logits
    # The compressed continuation is the full cache with the evicted rows masked out.
    assert torch.allclose(logits, full_cache_without(tiny_model, token_ids, keep, new), atol=1e-4)


def full_cache_without(model, token_ids, kept, new, valid=None):
    """Logits of `new` over the full (context + window) cache with every context row outside
    kept[l] (kv_heads, rows) masked out (only the `valid` entries of kept, when given)."""
    masks = {}
    for layer in range(len(kept)):
        m = torch.ones(kept[layer].shape[0], CONTEXT + WINDOW, dtype=torch.bool)
        m[:, CONTEXT:] = False
        for h in range(kept[layer].shape[0]):
            rows = kept[layer][h] if valid is None else kept[layer][h][valid[layer][h]]
            m[h, rows] = False
        masks[layer] = m
    with torch.no_grad():
        past = model(token_ids[:, : CONTEXT + WINDOW], use_cache=True).past_key_values
        with masked_rows(model, masks):
            return model(new, past_key_values=past).logits


def constructed(keys, queries=None, prefill=None, n=None):
    """Inputs for one layer, one KV head (queries have one query head per KV head)."""
    rows = keys.shape[0]
    n = rows if n is None else n
    window = None if queries is None else [queries[None]]
    return RetentionInputs([keys[None]], [torch.arange(rows)[None]], window,
                           None if queries is None else torch.arange(rows, rows + queries.shape[0]), n,
                           None if prefill is None else [prefill[None]])


def one_hot_keys(rows, d=8, scale=1.0):
    k = torch.zeros(rows, d)
    k[torch.arange(rows), torch.arange(rows) % d] = scale
    return k


def test_recent_window_keeps_only_the_last_rows():
    keep = RecentWindow().keep(constructed(torch.randn(20, 8)), 5)
    assert keep.flatten().tolist() == [15, 16, 17, 18, 19]


def test_streaming_llm_keeps_sinks_then_the_last_rows():
    keep = StreamingLLM(sinks=2, recent=3).keep(constructed(torch.randn(20, 8)), 5)
    assert keep.flatten().tolist() == [0, 1, 17, 18, 19]


def test_h2o_keeps_the_rows_with_most_accumulated_attention():
    # Every prefill query points at rows 5 and 9 (large dot products); others get little.
    d, rows = 8, 16
    keys = torch.zeros(rows, d)
    keys[5, 0] = keys[9, 1] = 1.0
    prefill = torch.zeros(rows, d)
    prefill[:, 0] = prefill[:, 1] = 20.0
    keep = H2O(sinks=0, recent=0).keep(constructed(keys, prefill=prefill), 2)
    assert keep.flatten().tolist() == [5, 9]
    # Uniform attention: query i gives 1/(i+1) to each row it sees. H2O's sum favours early rows;
    # normalised, a row's score is the mean over the queries that saw it.
    uniform = constructed(torch.zeros(rows, d), prefill=torch.zeros(rows, d))
    share = 1.0 / torch.arange(1, rows + 1.0)
    expected_sum = torch.stack([share[j:].sum() for j in range(rows)])
    expected_mean = torch.stack([share[j:].mean() for j in range(rows)])
    assert torch.allclose(H2O(sinks=0, recent=0).score(uniform)[0, 0], expected_sum, atol=1e-6)
    assert torch.allclose(H2O(sinks=0, recent=0, normalize=True).score(uniform)[0, 0], expected_mean, atol=1e-6)


def test_scissorhands_counts_above_uniform_attention_over_the_history():
    d, rows = 8, 12
    keys = torch.zeros(rows, d)
    keys[3, 0] = 1.0  # the last 4 queries attend to row 3 ...
    keys[7, 1] = 1.0  # ... and only 2 of them to row 7
    prefill = torch.zeros(rows, d)
    prefill[-4:, 0] = 30.0
    prefill[-2:, 1] = 30.0
    scores = Scissorhands(sinks=0, recent=0, history=4).score(constructed(keys, prefill=prefill))[0, 0]
    assert scores[3] == 4 and scores[7] == 2 and scores.argmax() == 3


def test_tova_uses_only_the_last_window_query():
    keys = one_hot_keys(8, scale=1.0)
    queries = torch.zeros(2, 8)
    queries[0, 2] = 50.0  # an earlier window query looks at row 2 ...
    queries[1, 6] = 50.0  # ... the last one at row 6
    assert TOVA(sinks=0, recent=0).keep(constructed(keys, queries), 1).flatten().tolist() == [6]
    assert SnapKV(sinks=0, recent=0, kernel=1).keep(constructed(keys, queries), 2).flatten().tolist() == [2, 6]


def test_knorm_keeps_the_lowest_norm_keys():
    keys = torch.ones(10, 4) * torch.arange(10, 0, -1.0)[:, None]  # norms fall with position
    assert Knorm(sinks=0, recent=0).keep(constructed(keys), 3).flatten().tolist() == [7, 8, 9]


def test_keydiff_keeps_the_keys_least_like_the_mean():
    keys = torch.ones(10, 4)
    keys[4] = torch.tensor([1.0, -1.0, 0.0, 0.0])  # orthogonal to the common direction
    keys[8] = torch.tensor([-1.0, -1.0, -1.0, -1.0])  # opposite
    assert KeyDiff(sinks=0, recent=0).keep(constructed(keys), 2).flatten().tolist() == [4, 8]


def test_random_is_seeded():
    x = constructed(torch.randn(30, 8))
    a, b, c = RandomRule(seed=1).score(x), RandomRule(seed=1).score(x), RandomRule(seed=2).score(x)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_kvmirror_mixes_attention_and_novelty_with_its_weights():
    keys = torch.ones(12, 4)
    keys[3] = torch.tensor([4.0, 0.0, 0.0, 0.0])  # attended by the window
    keys[9] = torch.tensor([-1.0, -1.0, -1.0, -1.0])  # the novel key, unattended
    queries = torch.tensor([[10.0, 0.0, 0.0, 0.0]])
    x = constructed(keys, queries)
    assert KVMirrorHybrid(sinks=0, recent=0).keep(x, 1).flatten().tolist() == [3]
    assert KVMirrorHybrid(sinks=0, recent=0, attention_weight=0.0, novelty_weight=1.0).keep(x, 1).flatten().tolist() == [9]
    assert KVMirrorHybrid(sinks=2, recent=3).keep(x, 6).flatten().tolist() == [0, 1, 3, 9, 10, 11]


def test_rules_needing_prefill_queries_say_so():
    with pytest.raises(ValueError, match="prefill's queries"):
        H2O().keep(constructed(torch.randn(300, 8)), 200)


def test_trace_replay_is_not_circular():
    """SnapKV keeps exactly the rows its window ranks highest (self recall 1), yet the later
    query needs another row, which replay reports as missed."""
    from idlekv.retention.trace import AttentionTrace, replay

    keys = one_hot_keys(8)
    window = torch.zeros(1, 8)
    window[0, 2] = 50.0
    later = torch.zeros(1, 1, 8)
    later[0, 0, 6] = 1.0  # the later query attends only to row 6
    trace = AttentionTrace(later, 8, 1, 64)
    report = replay(SnapKV(sinks=0, recent=0, kernel=1), constructed(keys, window), trace, budget=1)
    assert report["self_recall"] == 1.0 and report["needed_recall"] == 0.0 and report["attention_recall"] == 0.0
    assert report["bytes_saved"] == 7 * 64 and report["kept_ratio"] == 1 / 8


def test_trace_capture_replays_every_rule(tiny_model, token_ids, tmp_path):
    from idlekv.retention.trace import AttentionTrace, capture_trace, replay

    ids = token_ids[0].tolist()
    trace, x = capture_trace(tiny_model, ids[:CONTEXT], ids[CONTEXT:])
    assert trace.later_attention.shape == (tiny_model.config.num_hidden_layers, tiny_model.config.num_key_value_heads, CONTEXT)
    # Each later query spreads at most 1 over the context; the sum over rows is <= later tokens.
    assert torch.all(trace.later_attention.sum(-1) <= trace.later_tokens + 1e-4)
    trace.save(tmp_path / "t.pt")
    assert torch.equal(AttentionTrace.load(tmp_path / "t.pt").later_attention, trace.later_attention)
    for name in sorted(set(RULES) - {"keep_all"}):
        report = replay(make_rule(name, tiny_model, tmp_path, sinks=SINKS, recent=RECENT), x, trace, BUDGET)
        assert 0.0 <= report["needed_recall"] <= 1.0 and 0.0 <= report["attention_recall"] <= 1.0
    full = replay(RecentWindow(), x, trace, CONTEXT)
    assert full["needed_recall"] == 1.0 and abs(full["attention_recall"] - 1.0) < 1e-6


def test_learned_relevance_keeps_what_its_probe_scores_highest(tmp_path):
    """A probe that weighs only the window-attention feature ranks rows like that feature;
    the threshold controller's per-head threshold keeps exactly the budget."""
    from idlekv.retention.probe import STAT_FEATURES, LearnedRelevance, ProbeWeights, row_features

    d = 8
    f = d + len(STAT_FEATURES)
    weight = torch.zeros(1, f)
    weight[0, d + STAT_FEATURES.index("log_window_max")] = 1.0
    path = ProbeWeights(weight, torch.zeros(1), torch.zeros(1, f), torch.ones(1, f)).save(tmp_path / "p.pt")
    keys = one_hot_keys(8)
    queries = torch.tensor([[0.0, 1, 2, 3, 4, 10, 5, 6]]) * 5  # distinct attention, highest on row 5
    x = constructed(keys, queries)
    rule = LearnedRelevance(sinks=0, recent=0, path=str(path))
    assert rule.keep(x, 1).flatten().tolist() == [5]
    scores = rule.score(x)
    threshold = LearnedRelevance.threshold_for_budget(scores, 3)
    assert int((scores >= threshold[..., None]).sum()) == 3
    assert row_features(x, 0).shape == (1, 8, f)
    with pytest.raises(FileNotFoundError, match="make probe"):
        LearnedRelevance(path=str(tmp_path / "missing.pt"))

