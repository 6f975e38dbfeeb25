"""Conditions as data (selectors with their own options) and signals by name (WrongQ among them)."""

import pytest
import torch

from idlekv.engine import EngineConfig, RepairEngine
from idlekv.repair.conditions import STANDARD_CONDITIONS, Condition
from idlekv.repair.selectors import Coverage, TopKBurst
from idlekv.repair.signals import SIGNALS
from tests.test_engine import B, compressed_with_signal, setup  # noqa: F401 (the fixture)


def test_a_selector_carries_its_own_options():
    idle = Condition.from_config({"name": "I", "kind": "repair", "signal": "exact", "selector": {"name": "topk_burst", "lo": -1, "hi": 5}})
    assert idle.build_selector() == TopKBurst(lo=-1, hi=5)
    cov = Condition.from_config({"name": "C", "kind": "repair", "signal": "exact", "selector": "coverage"}, {"coverage": {"width": 7}})
    assert cov.build_selector() == Coverage(width=7)
    own = Condition.from_config({"name": "C", "kind": "repair", "signal": "exact", "selector": {"name": "coverage", "width": 3}},
                                {"coverage": {"width": 7}})
    assert own.build_selector() == Coverage(width=3)  # a condition's own options win over the config's defaults
    with pytest.raises(ValueError, match="selector 'nope'"):
        Condition.from_config({"name": "X", "kind": "repair", "signal": "exact", "selector": "nope"})
    with pytest.raises(ValueError, match="signal 'psychic'"):
        Condition("X", "repair", "psychic", "topk")


def test_the_standard_conditions_have_unique_names_and_registered_parts():
    names = [c.name for c in STANDARD_CONDITIONS]
    assert len(set(names)) == len(names)
    assert {c.signal for c in STANDARD_CONDITIONS if c.signal} <= set(SIGNALS)
    assert {"exact", "proxy", "stale", "wrong", "rule"} <= set(SIGNALS)


def test_the_wrong_signal_scores_with_another_samples_turn(setup):  # noqa: F811
    tok, model, sample, engine = setup
    from ruler import generate

    other = generate("mq_niah_4q_embedded", 640, 2, tok)
    root, n_ctx, comp, _ = compressed_with_signal(engine, sample, "rule")
    first = engine.turn_one(sample)
    wrong_ids = engine.rows_of(other).turns[1]
    assert wrong_ids != first.turn_ids[1]
    signals = engine.signals(comp, first.turn_ids[1], None, None, {"exact", "wrong"}, wrong_turn_ids=wrong_ids)
    exact, wrong = signals["exact"].scores.warm[0], signals["wrong"].scores.warm[0]
    assert exact.shape == wrong.shape and not torch.allclose(exact, wrong)
    assert signals["exact"].seconds > 0 and signals["wrong"].seconds > 0
    with pytest.raises(ValueError, match="another sample"):
        engine.signals(comp, first.turn_ids[1], None, None, {"wrong"})


def test_wrongq_runs_in_the_engine_beside_the_others(setup):  # noqa: F811
    tok, model, sample, _ = setup
    from idlekv.retention import SnapKV
    from ruler import generate

    conditions = [STANDARD_CONDITIONS[1], Condition("WrongQ-K", "repair", "wrong", "topk_burst", (("hi", 5), ("lo", -1))),
                  Condition("StaleQ-K", "repair", "stale", "topk_burst", (("hi", 5), ("lo", -1)))]
    engine = RepairEngine(model, tok, SnapKV(sinks=4, recent=16), EngineConfig(budgets=[B], ks=[8], conditions=conditions,
                                                                                 max_new_tokens=3))
    rows = engine.run_sample(sample, wrong=generate("mq_niah_4q_embedded", 640, 2, tok))
    assert sorted(r["condition"] for r in rows) == ["Matched", "StaleQ-K", "WrongQ-K"]
    assert all(r["active_rows"] == B + 8 + r["tail_rows"] for r in rows)
