"""ARKV's tri-state: the mixed-precision cache against the tiered cache, the plan, equal bytes."""

import pytest
import torch

from idlekv.cache import MixedPrecisionCache
from idlekv.retention import ARKV
from tests.test_retention_library import BUDGET, CONTEXT, WINDOW, turn_one_inputs


class FirstLayerFull(ARKV):
    """Layer shares fixed (1, 0, 0, ...): the random tiny models' layers all score alike."""

    def layer_shares(self, inputs):
        return torch.tensor([1.0] + [0.0] * (inputs.num_layers - 1))


def compressed(model, ids, rule, budget=BUDGET):
    cache, x = turn_one_inputs(model, ids)
    plan = rule.plan(x, budget)
    tail = torch.arange(CONTEXT, CONTEXT + WINDOW).expand(plan.keep.shape[1], -1)
    cache.compress([torch.cat([plan.keep[layer], tail], dim=-1) for layer in range(cache.num_layers)])
    full = [torch.cat([plan.full[layer], torch.ones_like(tail, dtype=torch.bool)], dim=-1) for layer in range(cache.num_layers)]
    return cache, plan, full, x


def continue_logits(model, cache, ids):
    new = ids[:, CONTEXT + WINDOW : CONTEXT + WINDOW + 2]
    with torch.no_grad():
        return model(new, past_key_values=cache.to_hf(), position_ids=cache.position_ids(2)).logits


def test_all_full_rows_equal_the_tiered_cache(tiny_model, token_ids):
    cache, plan, full, _ = compressed(tiny_model, token_ids, ARKV(sinks=2, recent=4, protected=4))
    mixed = MixedPrecisionCache.from_tiered(cache, [torch.ones_like(f) for f in full])
    assert mixed.bytes().quantized == 0 and mixed.bytes().full == cache.bytes().active_kv
    assert torch.allclose(continue_logits(tiny_model, mixed, token_ids), continue_logits(tiny_model, cache, token_ids), atol=1e-5)


@pytest.mark.parametrize("precision", ["fp8", "int8"])
def test_quantized_rows_cost_their_bytes_and_little_accuracy(tiny_model, token_ids, precision):
    cache, plan, full, _ = compressed(tiny_model, token_ids, FirstLayerFull(sinks=2, recent=4, protected=4, precision=precision))
    mixed = MixedPrecisionCache.from_tiered(cache, full, precision)
    b = mixed.bytes()
    k = cache.active.keys(0)
    heads, d, size = k.shape[1], k.shape[-1], k.element_size()
    n_full = sum(int(f[0].sum()) for f in full)
    n_quant = sum(f.shape[-1] - int(f[0].sum()) for f in full)
    assert n_quant > 0
    assert b.full == 2 * heads * n_full * d * size
    assert b.quantized == 2 * heads * n_quant * d  # one byte per element
    assert b.scales == 2 * heads * n_quant * 4  # one float32 scale per row
    ref = continue_logits(tiny_model, cache, token_ids)
    out = continue_logits(tiny_model, mixed, token_ids)
    assert (out - ref).abs().max() / ref.abs().max() < 0.05
    # The next turn's rows are absorbed in full precision.
    hf = mixed.to_hf()
    new = token_ids[:, CONTEXT + WINDOW : CONTEXT + WINDOW + 2]
    with torch.no_grad():
        tiny_model(new, past_key_values=hf, position_ids=mixed.position_ids(2), use_cache=True)
    assert mixed.absorb(hf) == 2 and mixed.bytes().quantized == b.quantized and mixed.rows == cache.rows + 2


def test_plan_keeps_the_budget_protects_the_recent_rows_and_follows_layer_shares(tiny_model, token_ids):
    rule = ARKV(sinks=2, recent=4, protected=6)
    _, plan, _, x = compressed(tiny_model, token_ids, rule)
    assert plan.keep.shape[-1] == BUDGET and float(rule.layer_shares(x).max()) == pytest.approx(1.0)
    assert torch.equal(plan.keep, rule.keep(x, BUDGET))
    protected = plan.keep >= CONTEXT - 6
    assert bool(plan.full[protected].all())
    for layer in range(plan.keep.shape[0]):
        counts = plan.full[layer].sum(-1)
        expected = max(int(protected[layer].sum(-1).max()), round(float(rule.layer_shares(x)[layer]) * BUDGET))
        assert counts.tolist() == [expected] * counts.numel()


def test_equal_bytes_buys_more_rows_only_for_the_tri_state(tiny_model, token_ids):
    _, x = turn_one_inputs(tiny_model, token_ids)
    d, size = x.keys[0].shape[-1], 4
    bytes_for_10_rows = 10 * 2 * d * size
    assert ARKV(tri_state=False).budget_for_bytes(x, bytes_for_10_rows, d, size) == 10
    shares = ARKV().layer_shares(x)
    per_row = float((shares * 2 * d * size + (1 - shares) * 2 * (d + 4)).mean())
    assert ARKV().budget_for_bytes(x, bytes_for_10_rows, d, size) == int(bytes_for_10_rows // per_row)

    assert FirstLayerFull().budget_for_bytes(x, bytes_for_10_rows, d, size) > 10


def test_layer_shares_rank_a_spread_layer_above_a_peaked_one():
    from idlekv.retention.arkv import attention_shape

    uniform = torch.full((1, 1, 8), 1 / 8)
    peaked = torch.tensor([[[0.93] + [0.01] * 7]])
    visible = torch.ones(1, 1, 8, dtype=torch.bool)
    e_u, v_u, _ = attention_shape(uniform, visible)
    e_p, v_p, k_p = attention_shape(peaked, visible)
    assert e_u > e_p and v_u == pytest.approx(0.0) and v_p > 0 and k_p > 1
