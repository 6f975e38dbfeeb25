"""PyramidKV's per-layer and AdaKV's per-head budgets: padded, masked, and equal to the full
cache with every non-kept row masked out."""

import pytest
import torch

from idlekv.cache.row_mask import padded_selection, row_masks
from idlekv.retention import AdaKV, PyramidKV
from tests.test_retention_library import CONTEXT, WINDOW, full_cache_without, turn_one_inputs


def test_pyramid_budgets_shrink_with_depth_and_average_the_budget():
    scores = torch.rand(4, 2, 100)
    budgets = PyramidKV(sinks=2, recent=4, beta=4).head_budgets(scores, 30)
    per_layer = budgets[:, 0]
    assert torch.all(per_layer[:-1] >= per_layer[1:]) and per_layer[0] > per_layer[-1]
    assert int(budgets.sum()) == 30 * 4 * 2 and torch.all(budgets >= 6)


def test_adakv_moves_budget_to_the_head_with_the_mass():
    scores = torch.zeros(1, 2, 40)
    scores[0, 0, 10:30] = 1.0  # head 0 has 20 strong rows, head 1 none
    budgets = AdaKV(sinks=0, recent=0, floor=0.25).head_budgets(scores, 12)
    assert int(budgets.sum()) == 24 and budgets[0, 1] == 3 and budgets[0, 0] == 21


def test_padded_selection_marks_the_padding():
    ranked = torch.tensor([[[5, 1, 3, 0, 2, 4], [2, 0, 1, 3, 4, 5]]])
    keep, valid = padded_selection(ranked, torch.tensor([[2, 4]]))
    assert keep[0, 0].tolist() == [0, 1, 3, 5] and valid[0, 0].tolist() == [False, True, False, True]
    assert keep[0, 1].tolist() == [0, 1, 2, 3] and valid[0, 1].tolist() == [True, True, True, True]


@pytest.mark.parametrize("rule", [PyramidKV(sinks=2, recent=4, beta=3), AdaKV(sinks=2, recent=4)])
def test_masked_padding_equals_the_full_cache_without_the_evicted_rows(tiny_model, token_ids, rule):
    cache, x = turn_one_inputs(tiny_model, token_ids)
    scores = rule.score(x)
    budgets = rule.head_budgets(scores, 16)
    keep, valid = padded_selection(rule.ranking(scores), budgets)
    tail = torch.arange(CONTEXT, CONTEXT + WINDOW).expand(keep.shape[1], -1)
    cache.compress([torch.cat([keep[layer], tail], dim=-1) for layer in range(cache.num_layers)])
    visible = [torch.cat([valid[layer], torch.ones_like(tail, dtype=torch.bool)], dim=-1) for layer in range(cache.num_layers)]
    new = token_ids[:, CONTEXT + WINDOW : CONTEXT + WINDOW + 2]
    with torch.no_grad(), row_masks(tiny_model, visible):
        out = tiny_model(new, past_key_values=cache.to_hf(), position_ids=cache.position_ids(2)).logits
    assert torch.allclose(out, full_cache_without(tiny_model, token_ids, keep, new, valid), atol=1e-4)
    assert tiny_model.config._attn_implementation == "sdpa"  # restored
