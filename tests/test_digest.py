"""Page digests (Quest's min/max keys per page) and the digest signal: bounds, bookkeeping, engine and session."""

import pytest
import torch

from idlekv.cache import TieredCache
from idlekv.engine import EngineConfig, RepairEngine
from idlekv.repair.conditions import Condition
from idlekv.repair.digest import DigestOptions, digest_rows
from idlekv.repair.scoring import score_rows
from idlekv.retention import SnapKV
from idlekv.session import SessionConfig, SessionEngine
from tests.test_engine import B, setup  # noqa: F401 (the fixture)
from tests.test_session import CONDITIONS, SCHEDULE, K

LAYERS, HEADS, ROWS, DIM = 2, 2, 300, 16


def tiered(page_rows: int = 16, seed: int = 0, kept: int = 60) -> TieredCache:
    gen = torch.Generator().manual_seed(seed)
    keys = [torch.randn(1, HEADS, ROWS, DIM, generator=gen) for _ in range(LAYERS)]
    cache = TieredCache.from_tensors(keys, [torch.randn(k.shape, generator=gen) for k in keys])
    cache.warm.keep_digest(page_rows)
    cache.compress(torch.stack([torch.randperm(ROWS, generator=gen)[:kept].sort().values for _ in range(HEADS)]), reserve=32)
    return cache


def queries(seed: int = 1) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(2 * HEADS, 5, DIM, generator=gen) for _ in range(LAYERS)]


def test_the_bound_is_at_least_every_logit_of_its_page():
    cache = tiered(page_rows=7)
    q = queries()[0].reshape(HEADS, -1, DIM).transpose(-1, -2)  # (H, d, g*T), as scoring groups them
    digest = cache.warm.digest
    bounds = digest.bounds(0, q)  # (H, pages, g*T)
    stored = cache.warm._k[0].data[0]
    for page in range(digest.pages(0)):
        start, rows = int(digest._start[0][page]), int(digest._rows[0][page])
        logits = stored[:, start : start + rows] @ q  # (H, rows, g*T)
        assert bool((bounds[:, page, None] >= logits - 1e-5).all())
        # the bound is tight where one key holds every extreme: a one-row page
        if rows == 1:
            assert torch.allclose(bounds[:, page], logits[:, 0], atol=1e-5)
    assert digest.pages(0) == -(-(ROWS - 60) // 7)
    assert digest.nbytes == 2 * LAYERS * HEADS * digest.pages(0) * DIM * 4


def test_every_page_kept_is_the_exact_signal():
    cache = tiered()
    exact, digest = score_rows(cache, queries()), digest_rows(cache, queries(), DigestOptions(16, kept_pages=10_000))
    for a, b in zip(exact.warm + exact.active, digest.warm + digest.active):
        assert torch.allclose(a, b, atol=1e-6)
    assert all(torch.equal(a, b) for a, b in zip(exact.warm_slots, digest.warm_slots))


def test_few_pages_score_only_their_rows_against_a_smaller_normaliser():
    cache = tiered()
    exact, digest = score_rows(cache, queries()), digest_rows(cache, queries(), DigestOptions(16, kept_pages=3))
    for a, b in zip(exact.warm, digest.warm):
        scored = b > 0
        assert int(scored.sum(-1).min()) == 3 * 16  # three full pages per head, nothing else
        # the rows not read are not in the softmax's sum, so a kept row's probability can only rise
        assert bool((b[scored] >= a[scored] - 1e-7).all()) and bool((b[scored] > a[scored]).any())


def test_promoted_rows_leave_their_pages_and_cumulative_evictions_append_pages():
    cache = tiered()
    digest = cache.warm.digest
    pages = digest.pages(0)
    slots, _ = cache.warm.candidates(0)
    twin = cache.fork()
    twin.promote([slots[:, :, :16]] * LAYERS)  # every head's first page
    assert int(digest.present_rows(0, twin.warm.present(0))[0, :, 0].max()) == 0
    assert int(digest.present_rows(0, cache.warm.present(0))[0, :, 0].min()) == 16  # the parent still holds them
    after = digest_rows(twin, queries(), DigestOptions(16, kept_pages=10_000))
    exact = score_rows(twin, queries())
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(exact.warm, after.warm))
    # a second eviction (the session engine's next pause) appends its own pages, to this fork only
    twin.compress([torch.arange(20).expand(HEADS, -1)] * LAYERS)
    assert twin.warm.digest.pages(0) > pages and cache.warm.digest.pages(0) == pages
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(score_rows(twin, queries()).warm,
                                                                digest_rows(twin, queries(), DigestOptions(16, 10_000)).warm))


def test_compaction_rebuilds_the_pages_over_the_new_slots():
    cache = tiered()
    slots, _ = cache.warm.candidates(0)
    cache.promote([slots[:, :, 5:40]] * LAYERS)
    cache.warm.compact()
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(score_rows(cache, queries()).warm,
                                                                digest_rows(cache, queries(), DigestOptions(16, 10_000)).warm))


def test_the_digest_signal_needs_its_pages():
    gen = torch.Generator().manual_seed(0)
    keys = [torch.randn(1, HEADS, ROWS, DIM, generator=gen)]
    cache = TieredCache.from_tensors(keys, [k.clone() for k in keys])
    cache.compress(torch.arange(50).expand(HEADS, -1))
    with pytest.raises(ValueError, match="keep_digest"):
        digest_rows(cache, queries()[:1], DigestOptions())
    with pytest.raises(ValueError, match="before the first eviction"):
        cache.warm.keep_digest(16)
    with pytest.raises(ValueError, match="out of range"):
        DigestOptions(page_rows=0)


def test_idlekv_digest_with_every_page_kept_repairs_as_idlekv(setup):  # noqa: F811
    tok, model, sample, _ = setup
    burst = (("hi", 5), ("lo", -1))
    conditions = [Condition("IdleKV", "repair", "exact", "topk_burst", burst),
                  Condition("IdleKV-digest", "repair", "digest", "topk_burst", burst)]
    rows = RepairEngine(model, tok, SnapKV(sinks=4, recent=16), EngineConfig(
        budgets=[B], ks=[8, 24], conditions=conditions, max_new_tokens=3, digest=DigestOptions(8, kept_pages=10_000))).run_sample(sample)
    by = {(r["condition"], r["K"]): r for r in rows}
    assert all(r["digest_bytes"] > 0 for r in rows)  # the root kept pages (a condition reads them), reported per row
    for k in (8, 24):
        assert by[("IdleKV", k)]["answer"] == by[("IdleKV-digest", k)]["answer"]
        assert by[("IdleKV", k)]["needle_rows_active"] == by[("IdleKV-digest", k)]["needle_rows_active"]
    few = RepairEngine(model, tok, SnapKV(sinks=4, recent=16), EngineConfig(
        budgets=[B], ks=[8], conditions=conditions, max_new_tokens=3, digest=DigestOptions(8, kept_pages=2))).run_sample(sample)
    assert {r["condition"] for r in few} == {"IdleKV", "IdleKV-digest"}


def test_the_session_engine_keeps_pages_across_pauses(setup):  # noqa: F811
    from ruler import generate

    tok, model, _, _ = setup
    sample = generate("mq_niah_4q_embedded", 640, 0, tok, num_keys=6, num_queries=6, split="schedule", schedule=SCHEDULE)
    digest_idle = Condition("IdleKV-digest", "repair", "digest", "topk_burst", (("hi", 5), ("lo", -1)))
    config = SessionConfig(B, K, [CONDITIONS[2], digest_idle], max_new_tokens=4, digest=DigestOptions(8, kept_pages=10_000))
    rows = SessionEngine(model, tok, SnapKV(sinks=4, recent=16), config).run_sample(sample)
    exact = [r["answer"] for r in rows if r["condition"] == "IdleKV"]
    assert exact == [r["answer"] for r in rows if r["condition"] == "IdleKV-digest"] and len(exact) == len(sample.turns)
