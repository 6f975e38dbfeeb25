"""What the engine holds: forks that share their base, turns written in place, the predicted peak."""

import pytest
import torch

from idlekv.cache import TieredCache
from idlekv.evaluation import prefill
from idlekv.generation import run_turn
from idlekv.repair.memory import DoesNotFit, KVShape, PeakPlan, SampleRows, check_fits, predict_peak


def test_a_repaired_fork_owns_only_its_promoted_rows():
    keys = [torch.randn(1, 2, 200, 8) for _ in range(3)]
    comp = TieredCache.from_tensors(keys, [k.clone() for k in keys])
    comp.compress(torch.arange(0, 200, 4), reserve=16)
    forks = [comp.fork() for _ in range(5)]
    for i, fork in enumerate(forks):
        fork.promote(torch.arange(i, i + 8))
    for fork in forks:
        assert fork.rows == 58 and fork.active.extra_rows == 8
        assert fork.active._k[0].data_ptr() == comp.active._k[0].data_ptr()  # the base is shared, not copied
    # the rows are the same as a fork that copied everything
    alone = comp.fork()
    alone.active.own()
    alone.promote(torch.arange(2, 10))
    for layer in range(3):
        assert torch.equal(forks[2].active.keys(layer), alone.active.keys(layer))
        assert torch.equal(forks[2].active.positions(layer), alone.active.positions(layer))


def test_a_turn_is_decoded_into_room_made_once(tiny_model, token_ids):
    ids = token_ids[0].tolist()
    cache = prefill(tiny_model, ids[:32], room=16 + 6)
    buffers = [k.data_ptr() for k in cache.active._k]
    answer = run_turn(tiny_model, cache, ids[32:48], max_new_tokens=6, stop_ids=())
    assert [k.data_ptr() for k in cache.active._k] == buffers  # no copy of the cache per token
    assert cache.rows == 48 + len(answer) - 1 and cache.seen_tokens == cache.rows
    again = prefill(tiny_model, ids[:32])  # no room: the same answer, through reallocation
    assert run_turn(tiny_model, again, ids[32:48], max_new_tokens=6, stop_ids=()) == answer


def test_the_prediction_replays_the_schedule():
    shape = KVShape(layers=2, kv_heads=4, head_dim=8, dtype_bytes=2)
    rows = SampleRows(prompt=1000, turn1=10, answer1=20, turn2=12, answer2=20)
    plan = predict_peak(shape, rows, budgets=[400], ks=[8, 16], kinds=["full", "repair", "repair", "refresh"],
                        resume_batch_rows=10_000)
    assert plan.root == 1000 + 30 + 32
    assert plan.compressed == 400 + 30 + 16
    # six waiting caches (two Ks x three conditions), the largest 446 rows + 32 of room, in one batch
    assert plan.batch == 6 * (446 + 32) and plan.building == 446
    assert plan.warm == 600 and plan.kv_bytes == plan.rows * shape.row_bytes
    smaller = predict_peak(shape, rows, [400], [8, 16], ["full", "repair", "repair", "refresh"], resume_batch_rows=1000)
    assert smaller.batch <= 1000 < plan.batch


def test_a_run_that_cannot_fit_is_refused_with_what_to_change():
    huge = PeakPlan(root=1 << 40, compressed=0, batch=0, building=0, row_bytes=1 << 20)
    with pytest.raises(DoesNotFit, match="resume_batch_rows"):
        check_fits(huge, 0, "cpu", "test")
    assert "predicted peak" in check_fits(PeakPlan(10, 0, 0, 0, 8), 0, "cpu", "test")
