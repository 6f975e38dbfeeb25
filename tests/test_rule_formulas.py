"""Each rule's scores on a constructed case against a plain re-statement of its paper's formula."""

import math

import pytest
import torch

from idlekv.retention import H2O, TOVA, KeyDiff, PyramidKV, SnapKV, SnapKVMax
from idlekv.retention.base import BudgetError, RetentionInputs

torch.manual_seed(0)
LAYERS, KV_HEADS, GROUP, D, N, W, Q = 2, 2, 2, 8, 24, 4, 3  # Q: question tokens after the context


def case(with_question: bool = False) -> RetentionInputs:
    rows = N + (Q if with_question else 0)
    keys = [torch.randn(KV_HEADS, rows, D) for _ in range(LAYERS)]
    positions = [torch.arange(rows).expand(KV_HEADS, -1).clone() for _ in range(LAYERS)]
    window = [torch.randn(KV_HEADS * GROUP, W, D) for _ in range(LAYERS)]
    prefill = [torch.randn(KV_HEADS * GROUP, rows, D) for _ in range(LAYERS)]
    return RetentionInputs(keys, positions, window, torch.arange(N - W, N), N, prefill)


def softmax_row(q, keys, visible):
    logits = [sum(q[i] * k[i] for i in range(D)) / math.sqrt(D) if ok else -math.inf for k, ok in zip(keys, visible)]
    top = max(logits)
    e = [math.exp(x - top) for x in logits]
    return [x / sum(e) for x in e]


def window_attention(x, layer, query_head, w):
    """Plain attention of window query w of one query head over its KV head's rows (causal)."""
    keys = x.keys[layer][query_head // GROUP].tolist()
    pos = x.window_positions[w].item()
    return softmax_row(x.window_queries[layer][query_head, w].tolist(), keys, [p <= pos for p in range(len(keys))])


def test_snapkv_sums_the_window_and_average_pools_counting_the_padding():
    x = case()
    scores = SnapKV(sinks=0, recent=0).score(x)
    for layer in range(LAYERS):
        for kv in range(KV_HEADS):
            summed = [0.0] * N
            for h in range(kv * GROUP, (kv + 1) * GROUP):
                for w in range(W):
                    summed = [s + a / GROUP for s, a in zip(summed, window_attention(x, layer, h, w))]
            pooled = [sum(summed[j] for j in range(i - 2, i + 3) if 0 <= j < N) / 5 for i in range(N)]
            assert scores[layer, kv].tolist() == pytest.approx(pooled, abs=1e-5)


def test_snapkv_max_is_the_named_variant():
    x = case()
    scores = SnapKVMax(sinks=0, recent=0, kernel=1).score(x)
    for kv in range(KV_HEADS):
        peak = [max(window_attention(x, 0, h, w)[i] for w in range(W)) for h in range(kv * GROUP, (kv + 1) * GROUP) for i in [0]]
        assert scores[0, kv, 0].item() == pytest.approx(sum(peak) / GROUP, abs=1e-5)


def test_keydiff_anchors_on_the_mean_unit_key():
    x = case()
    scores = KeyDiff(sinks=0, recent=0).score(x)
    for layer in range(LAYERS):
        for kv in range(KV_HEADS):
            keys = x.keys[layer][kv].tolist()
            units = [[v / math.sqrt(sum(c * c for c in k)) for v in k] for k in keys]
            anchor = [sum(u[i] for u in units) / N for i in range(D)]
            norm_a = math.sqrt(sum(a * a for a in anchor))
            expected = [1 - sum(u[i] * anchor[i] for i in range(D)) / norm_a for u in units]
            assert scores[layer, kv].tolist() == pytest.approx(expected, abs=1e-5)
    raw = KeyDiff(sinks=0, recent=0, anchor="raw").score(x)
    assert not torch.allclose(raw, scores)  # the earlier rule ranks by another anchor


def test_tova_averages_the_last_query_over_every_head():
    x = case()
    scores = TOVA(sinks=0, recent=0).score(x)
    for layer in range(LAYERS):
        mean = [sum(window_attention(x, layer, h, W - 1)[i] for h in range(KV_HEADS * GROUP)) / (KV_HEADS * GROUP) for i in range(N)]
        for kv in range(KV_HEADS):
            assert scores[layer, kv].tolist() == pytest.approx(mean, abs=1e-6)
    per_group = TOVA(sinks=0, recent=0, per_group=True).score(x)
    assert not torch.allclose(per_group[:, 0], per_group[:, 1])


def test_h2o_accumulates_the_questions_queries_when_query_aware():
    x = case(with_question=True)
    scores = H2O(sinks=0, recent=0).score(x)
    total = N + Q
    for layer in range(LAYERS):
        for kv in range(KV_HEADS):
            acc = [0.0] * total
            keys = x.keys[layer][kv].tolist()
            for h in range(kv * GROUP, (kv + 1) * GROUP):
                for t in range(total):  # every query seen: the context's, then the question's
                    a = softmax_row(x.prefill_queries[layer][h, t].tolist(), keys, [p <= t for p in range(total)])
                    acc = [s + v / GROUP for s, v in zip(acc, a)]
            assert scores[layer, kv].tolist() == pytest.approx(acc[:N], abs=1e-4)
    context_only = RetentionInputs(x.keys, x.positions, x.window_queries, x.window_positions, N,
                                   [q[:, :N] for q in x.prefill_queries])
    assert not torch.allclose(H2O(sinks=0, recent=0).score(context_only), scores)  # the question moves the scores


def test_pyramidkv_caps_the_bottom_layer_at_the_context_and_moves_the_excess_up():
    scores = torch.rand(4, 2, 100)
    rule = PyramidKV(sinks=2, recent=4, beta=20)
    budgets = rule.head_budgets(scores, 60)[:, 0]  # free 54: the bottom layer would want 105 of 94
    assert budgets.tolist() == [100, 73, 46, 21]
    assert float(budgets.float().mean()) == 60 and int(budgets.max()) <= 100
    # below the cap, the paper's line: free 24, 46.8 down to 24/20 = 1.2, floors 46, 31, 16, 1, the 2 left over from the top
    assert rule.head_budgets(scores, 30)[:, 0].tolist() == [52, 37, 23, 8]
    with pytest.raises(BudgetError):
        rule.head_budgets(scores, 101)
