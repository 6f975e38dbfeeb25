"""The multi-turn session on a random tiny model: the invariants a carried cache must keep at every pause."""

import pytest
import torch

import idlekv.engine as engine_module
from idlekv.embedded.tokenizer import build_tokenizer
from idlekv.evaluation import answer_sample
from idlekv.repair.conditions import Condition
from idlekv.retention import KeepAll, SnapKV
from idlekv.session import SessionConfig, SessionEngine
from idlekv.tiny_models import build_tiny_model
from ruler import generate

SCHEDULE = [[0, 1], [2, 3], [4, 5], [0, 2]]
B, K = 80, 12
CONDITIONS = [Condition("Full", "full"), Condition("Matched", "repair", "rule", "topk", granularity="head"),
              Condition("IdleKV", "repair", "exact", "topk_burst", (("hi", 5), ("lo", -1))),
              Condition("Random-K", "repair", None, "random"), Condition("Oldest-K", "repair", None, "oldest")]


@pytest.fixture(scope="module")
def setup():
    tok = build_tokenizer()
    model = build_tiny_model("qwen2", vocab_size=len(tok), max_position_embeddings=2048)
    sample = generate("mq_niah_4q_embedded", 640, 0, tok, num_keys=6, num_queries=6, split="schedule", schedule=SCHEDULE)
    return tok, model, sample


def test_keep_all_at_every_pause_is_the_full_conversation_token_for_token(setup):
    tok, model, sample = setup
    config = SessionConfig(budget=sample.prompt_tokens, k=0, conditions=CONDITIONS[:2], max_new_tokens=6)
    session = SessionEngine(model, tok, KeepAll(sinks=0, recent=0), config)
    rows = session.run_sample(sample)
    plain = answer_sample(model, tok, sample, max_new_tokens=session.engine.rows_of(sample).max_new_tokens,
                          stop_ids=session.engine.stop_ids)
    for cond in ("Full", "Matched"):
        assert [r["answer"] for r in rows if r["condition"] == cond] == [t.answer for t in plain]


def test_every_pause_keeps_the_tiers_disjoint_and_complete_and_the_budget_exact(setup, monkeypatch):
    tok, model, sample = setup
    session = SessionEngine(model, tok, SnapKV(sinks=4, recent=16), SessionConfig(B, K, CONDITIONS, max_new_tokens=4))
    pause, checked = session._pause, []

    def checked_pause(traj, first, sample_, turn, wrong):
        before = None if traj.promoted is None else [p.clone() for p in traj.promoted]
        stats = pause(traj, first, sample_, turn, wrong)
        cache, n_ctx = traj.cache, first.context_length
        for layer in range(cache.num_layers):
            active = cache.active.positions(layer)[0]
            _, warm = cache.warm.candidates(layer)
            for head in range(active.shape[0]):
                rows = active[head].tolist() + (warm[0, head].tolist() if warm.numel() else [])
                assert sorted(rows) == list(range(cache.seen_tokens)), "a row is in both tiers, or in neither"
                if traj.cond.kind != "full":
                    assert int((active[head] < n_ctx).sum()) == B + K  # exactly the budget: B kept + K promoted
                if before is not None and traj.cond.kind != "full":
                    evicted = set(before[layer][head].tolist()) - set(active[head].tolist())
                    # rows promoted at the last pause and evicted now are back in the warm tier (then promoted anew or not)
                    assert evicted <= set(rows)
        checked.append((traj.cond.name, turn, stats.evicted_again))
        return stats

    monkeypatch.setattr(session, "_pause", checked_pause)
    rows = session.run_sample(sample)
    assert len(checked) == len(CONDITIONS) * (len(SCHEDULE) - 1)
    assert any(again > 0 for name, turn, again in checked if turn > 1 and name != "Full")  # eviction really is cumulative
    for r in rows:
        if r["condition"] != "Full" and r["turn"] > 1:
            assert r["active_rows"] == B + K + r["turn_rows"]


def test_one_prefill_per_turn_and_one_rendering_per_sample(setup, monkeypatch):
    tok, model, sample = setup
    session = SessionEngine(model, tok, SnapKV(sinks=4, recent=16), SessionConfig(B, K, CONDITIONS, max_new_tokens=4))
    renders, forwards = [], []
    original = engine_module.render
    monkeypatch.setattr(engine_module, "render", lambda *a, **kw: renders.append(1) or original(*a, **kw))
    hook = model.register_forward_pre_hook(lambda m, a, kw: forwards.append(tuple((a[0] if a else kw["input_ids"]).shape)),
                                           with_kwargs=True)
    try:
        session.run_sample(sample)
    finally:
        hook.remove()
    assert len(renders) == 1
    batched = [shape for shape in forwards if shape[0] == len(CONDITIONS) and shape[1] > 1]
    assert len(batched) == len(SCHEDULE) - 1  # each later turn: one prefill, every condition in one batch


def test_the_non_cumulative_variant_reselects_from_the_full_pool(setup):
    tok, model, sample = setup
    rows = {}
    for cumulative in (True, False):
        config = SessionConfig(B, K, CONDITIONS[:2], cumulative=cumulative, max_new_tokens=4)
        rows[cumulative] = SessionEngine(model, tok, SnapKV(sinks=4, recent=16), config).run_sample(sample)
    for r in rows[False]:
        if r["condition"] == "Matched" and r["turn"] > 1:
            assert r["active_rows"] == B + K + r["turn_rows"] and r["warm_rows"] == r["context_tokens"] - B - K
    assert [r["answer"] for r in rows[True] if r["condition"] == "Full"] == [r["answer"] for r in rows[False] if r["condition"] == "Full"]


def test_refresh_and_prefill_reading_rules_are_refused(setup):
    tok, model, _ = setup
    from idlekv.retention import H2O

    with pytest.raises(ValueError, match="refresh"):
        SessionEngine(model, tok, SnapKV(), SessionConfig(B, K, [Condition("R", "refresh", "exact")]))
    with pytest.raises(ValueError, match="prefill query"):
        SessionEngine(model, tok, H2O(), SessionConfig(B, K, CONDITIONS[:1]))
    torch.manual_seed(0)


def test_the_two_turn_frontier_is_the_session_with_two_turns(setup):
    """The grid engine (one pause, every (B, K) cell) and the session (every pause) are one semantics."""
    from idlekv.engine import EngineConfig, RepairEngine

    tok, model, _ = setup
    sample = generate("mq_niah_4q_embedded", 640, 3, tok)
    conditions = [*CONDITIONS, Condition("SpanRef-K", "repair", None, "span_ref", deployable=False)]
    rule = SnapKV(sinks=4, recent=16)
    grid = RepairEngine(model, tok, rule, EngineConfig(budgets=[B], ks=[K], conditions=conditions, max_new_tokens=4))
    session = SessionEngine(model, tok, rule, SessionConfig(B, K, conditions, max_new_tokens=4))
    cells = {r["condition"]: r for r in grid.run_sample(sample)}
    for r in session.run_sample(sample):
        if r["turn"] == 2:
            cell = cells[r["condition"]]
            assert (r["answer"], r["active_rows"], r["needle_rows_active"]) == (cell["answer"], cell["active_rows"],
                                                                              cell["needle_rows_active"]), r["condition"]
