"""The repair engine honours every retention plan: ragged budgets (PyramidKV per layer, AdaKV per
head) keep the planned rows per (layer, head) with the padding masked, and ARKV's tri-state plan
holds its middle tier at its storage precision; the recorded bytes are the plan's."""

import pytest
import torch

from idlekv.cache.row_mask import padded_selection
from idlekv.embedded.tokenizer import build_tokenizer
from idlekv.engine import EngineConfig, RepairEngine
from idlekv.repair.conditions import Condition
from idlekv.retention import ARKV, RULES, AdaKV, PyramidKV, SnapKV, build_rule
from idlekv.tiny_models import build_tiny_model
from ruler import generate

B, K = 80, 8


@pytest.fixture(scope="module")
def model_and_sample():
    tok = build_tokenizer()
    model = build_tiny_model("qwen2", vocab_size=len(tok), max_position_embeddings=2048, num_hidden_layers=4)
    return tok, model, generate("mq_niah_4q_embedded", 640, 1, tok)


def pause_of(tok, model, sample, rule):
    engine = RepairEngine(model, tok, rule, EngineConfig(budgets=[B], ks=[K], max_new_tokens=4))
    first = engine.turn_one(sample)
    return engine, engine.pause_after_turn_one(sample, first, {})


def visible_context(planned, n_ctx):
    """Per (layer, head): the context positions the cache holds and attention sees."""
    cache, out = planned.cache, {}
    for layer in range(cache.num_layers):
        positions = cache.active.positions(layer)[0]
        seen = planned.visible[layer] if planned.visible is not None else torch.ones_like(positions, dtype=torch.bool)
        for head in range(positions.shape[0]):
            p = positions[head][seen[head] & (positions[head] < n_ctx)]
            out[layer, head] = sorted(p.tolist())
    return out


# every registered rule a tiny model can run (keep_all refuses any budget below the context; a
# probe-reading rule needs weights trained beside the model, tested in phase02's tests)
MATRIX = sorted(name for name, cls in RULES.items() if name != "keep_all" and not cls.needs_trained_probe)
CONDITIONS = [Condition("Matched", "repair", "rule", "topk"), Condition("IdleKV", "repair", "exact", "topk_burst"),
              Condition("Random-K", "repair", None, "random")]


@pytest.mark.parametrize("name", MATRIX)
def test_every_rule_keeps_what_its_plan_says_through_compress_repair_and_resume(model_and_sample, name):
    tok, model, sample = model_and_sample
    rule = build_rule(name, sinks=4, recent=16)
    engine = RepairEngine(model, tok, rule, EngineConfig(budgets=[B], ks=[K], conditions=CONDITIONS, max_new_tokens=4))
    pause = engine.pause_after_turn_one(sample, engine.turn_one(sample), {})
    plan = rule.plan(pause.first.rule_inputs(), B, pause.scores)
    planned = engine.compressed(pause, B)
    kept = plan.keep if plan.valid is None else None
    for (layer, head), positions in visible_context(planned, pause.first.context_length).items():
        expected = kept[layer, head] if kept is not None else plan.keep[layer, head][plan.valid[layer, head]]
        assert positions == sorted(expected.tolist())
    assert (planned.held_not_kept > 0) == (plan.ragged or plan.tri_state)
    rows = engine.run_sample(sample)
    assert sorted(r["condition"] for r in rows) == sorted(c.name for c in CONDITIONS)
    for row in rows:  # K rows promoted into every (layer, head) beside the plan's
        assert row["active_bytes"] <= row["active_allocated_bytes"] and 0 <= row["accuracy"] <= 1


@pytest.mark.parametrize("rule", [PyramidKV(sinks=4, recent=16, beta=4), AdaKV(sinks=4, recent=16)], ids=["pyramidkv", "adakv"])
def test_a_ragged_plan_keeps_the_planned_rows_per_layer_and_head(model_and_sample, rule):
    tok, model, sample = model_and_sample
    engine, pause = pause_of(tok, model, sample, rule)
    budgets = rule.head_budgets(pause.scores, B)
    assert len(set(budgets.flatten().tolist())) > 1  # the plan is ragged here
    planned = engine.compressed(pause, B)
    seen = visible_context(planned, pause.first.context_length)
    keep, valid = padded_selection(rule.ranking(pause.scores), budgets)
    for (layer, head), positions in seen.items():
        assert len(positions) == int(budgets[layer, head])
        assert positions == sorted(keep[layer, head][valid[layer, head]].tolist())
    # the bytes a row reports are the planned rows', the padding reported as allocated only
    rows = engine.run_sample(sample)
    matched = next(r for r in rows if r["condition"] == "Matched")
    assert matched["active_bytes"] < matched["active_allocated_bytes"]


def test_uniform_layer_padding_is_a_warm_candidate(model_and_sample):
    tok, model, sample = model_and_sample
    rule = PyramidKV(sinks=4, recent=16, beta=4)
    engine, pause = pause_of(tok, model, sample, rule)
    planned = engine.compressed(pause, B)
    n = pause.first.context_length
    for layer in range(planned.cache.num_layers):
        warm = planned.cache.warm.candidates(layer)[1][0]
        held = {(layer, h): set(visible_context(planned, n)[layer, h]) for h in range(warm.shape[0])}
        for h in range(warm.shape[0]):
            # every context row the head does not keep is repairable: warm, padding included
            assert set(warm[h].tolist()) | held[layer, h] == set(range(n))


def test_a_tri_state_plan_holds_its_middle_tier_quantized_and_reports_its_bytes(model_and_sample):
    tok, model, sample = model_and_sample
    rule = ARKV(sinks=4, recent=16, protected=8)
    engine, pause = pause_of(tok, model, sample, rule)
    planned = engine.compressed(pause, B)
    plan = rule.plan(pause.first.rule_inputs(), B, pause.scores)
    assert planned.held_not_kept > 0 and planned.visible is None
    plain, changed = pause.first.root, 0
    for layer in range(plain.num_layers):
        held = planned.cache.active.keys(layer)[0, :, :B]
        original = plain.active.keys(layer)[0].gather(1, plan.keep[layer][..., None].expand(-1, -1, held.shape[-1]))
        same = (held == original).all(-1)
        assert bool(same[plan.full[layer]].all())  # full-precision rows untouched
        changed += int((~same[~plan.full[layer]]).sum())
    assert changed > 0  # the middle tier holds its round trip through fp8
    evict_only = ARKV(sinks=4, recent=16, protected=8, tri_state=False)
    assert pause_of(tok, model, sample, evict_only)[0].compressed(pause, B).held_not_kept == 0


def test_a_uniform_plan_is_the_rules_selection(model_and_sample):
    tok, model, sample = model_and_sample
    rule = SnapKV(sinks=4, recent=16)
    engine, pause = pause_of(tok, model, sample, rule)
    planned = engine.compressed(pause, B)
    selected = rule.select(pause.scores, B)
    for (layer, head), positions in visible_context(planned, pause.first.context_length).items():
        assert positions == selected[layer, head].tolist()
    assert planned.held_not_kept == 0


@pytest.mark.parametrize("rule", [PyramidKV(), AdaKV(), ARKV()], ids=["pyramidkv", "adakv", "arkv"])
def test_the_session_engine_refuses_what_it_cannot_hold(model_and_sample, rule):
    from idlekv.repair.conditions import Condition
    from idlekv.session import SessionConfig, SessionEngine

    tok, model, _ = model_and_sample
    assert not rule.plans_uniform and SnapKV().plans_uniform and ARKV(tri_state=False).plans_uniform
    with pytest.raises(ValueError, match="ragged or tri-state"):
        SessionEngine(model, tok, rule, SessionConfig(B, K, [Condition("Full", "full")]))


def test_a_ragged_plans_padding_takes_no_share_of_a_signal(model_and_sample):
    tok, model, sample = model_and_sample
    engine, pause = pause_of(tok, model, sample, PyramidKV(sinks=4, recent=16, beta=4))
    planned = engine.compressed(pause, B)
    signals = engine.signals(planned.cache, pause.turn_ids, pause.first.question_queries, pause.scores, wanted={"exact"},
                             active_visible=planned.visible)
    scores = signals["exact"].scores
    for layer, visible in enumerate(planned.visible):
        assert bool((scores.active[layer][~visible] == 0).all()) and bool((scores.active[layer][visible] > 0).any())
