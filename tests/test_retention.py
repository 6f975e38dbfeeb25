"""Retention rules: budgets, sinks and windows, and SnapKV against a hand computation."""

import pytest
import torch

from idlekv.retention import BudgetError, KeepAll, ReferenceSnapKV, RetentionInputs, SnapKV, StreamingLLM, build_rule


def inputs(n=32, heads=2, q_heads=4, d=8, w=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    keys = [torch.randn(heads, n + w, d, generator=gen) for _ in range(2)]
    positions = [torch.arange(n + w).expand(heads, -1) for _ in range(2)]
    queries = [torch.randn(q_heads, w, d, generator=gen) for _ in range(2)]
    return RetentionInputs(keys, positions, queries, torch.arange(n, n + w), n)


def test_streaming_llm_keeps_sinks_and_the_most_recent_rows():
    keep = StreamingLLM(sinks=4, recent=8).keep(inputs(), 16)
    expected = torch.cat([torch.arange(4), torch.arange(20, 32)])
    assert keep.shape == (2, 2, 16) and all(torch.equal(k, expected) for k in keep.reshape(-1, 16))


def test_snapkv_matches_a_hand_computation():
    x = inputs()
    rule = SnapKV(sinks=0, recent=0, kernel=1, aggregate="max")
    scores = rule.score(x)
    layer, head = 1, 0
    q = x.window_queries[layer][0:2]  # the two query heads of KV head 0
    k = x.keys[layer][head]
    logits = q @ k.T / 8**0.5
    causal = torch.arange(35)[None, :] <= torch.arange(32, 35)[:, None]
    probs = torch.softmax(logits.masked_fill(~causal, float("-inf")), dim=-1)
    expected = probs.amax(dim=1).mean(dim=0)[:32]
    assert torch.allclose(scores[layer, head], expected, atol=1e-6)
    keep = rule.keep(x, 5)
    assert torch.equal(keep[layer, head], expected.topk(5).indices.sort().values)


@pytest.mark.parametrize("aggregate", ["max", "mean"])
def test_reference_snapkv_is_the_windows_keys_as_queries_shared_by_every_head(aggregate):
    """The reference's rule: the window rows' own keys as queries, no pooling, the mean over
    every layer and KV head of the softmax scores, one ranking for all of them."""
    x = inputs()
    scores = ReferenceSnapKV(sinks=0, recent=0, aggregate=aggregate).score(x)
    expected = []
    for layer in range(2):
        for head in range(2):
            k = x.keys[layer][head]
            logits = k[32:] @ k.T / 8**0.5
            causal = torch.arange(35)[None, :] <= torch.arange(32, 35)[:, None]
            probs = torch.softmax(logits.masked_fill(~causal, float("-inf")), dim=-1)
            expected.append((probs.amax(dim=0) if aggregate == "max" else probs.mean(dim=0))[:32])
    expected = torch.stack(expected).mean(dim=0)
    assert scores.shape == (2, 2, 32)
    assert all(torch.allclose(s, expected, atol=1e-6) for s in scores.reshape(-1, 32))
    with pytest.raises(ValueError, match="aggregate"):
        ReferenceSnapKV(aggregate="median")
    assert isinstance(build_rule("snapkv_reference"), ReferenceSnapKV)


def test_snapkv_pooling_spreads_a_peak_to_its_neighbours():
    peak = torch.zeros(2, 32)
    peak[:, 10] = 1.0
    pooled = SnapKV(kernel=5, pooling="max")._pool(peak)
    assert torch.equal(pooled[0, 8:13], torch.ones(5)) and pooled[0, 7] == 0 and pooled[0, 13] == 0
    averaged = SnapKV(kernel=5)._pool(peak)  # the paper's: the peak's mass shared by its 5 neighbours
    assert torch.allclose(averaged[0, 8:13], torch.full((5,), 0.2)) and averaged[0, 7] == 0


@pytest.mark.parametrize("rule", [SnapKV(sinks=2, recent=4), StreamingLLM(sinks=2, recent=4)])
def test_rules_keep_exactly_the_budget_with_sinks_and_window(rule):
    keep = rule.keep(inputs(), 12)
    assert keep.shape == (2, 2, 12)
    for row in keep.reshape(-1, 12):
        assert len(set(row.tolist())) == 12 and {0, 1, 28, 29, 30, 31} <= set(row.tolist())
    assert torch.equal(rule.keep(inputs(), 12), keep)  # deterministic


def test_budget_errors_name_both_numbers():
    with pytest.raises(BudgetError, match="budget 40 is larger than the context \\(32 rows\\)"):
        SnapKV().keep(inputs(), 40)
    with pytest.raises(BudgetError, match="smaller than the 4 sinks \\+ 128 recent"):
        SnapKV().keep(inputs(n=300), 100)
    with pytest.raises(BudgetError, match="keep_all keeps all 32"):
        KeepAll().keep(inputs(), 16)
    with pytest.raises(ValueError, match="unknown retention rule"):
        build_rule("nope")
