"""The tiered cache against plain transformers forwards, on tiny models of every family."""

import pytest
import torch

from idlekv.cache import TieredCache
from tests.reference_attention import masked_rows

PREFIX, NEW = 40, 8
TOL = 1e-5


def prefill(model, ids):
    return model(ids[:, :PREFIX], use_cache=True).past_key_values


def resume(model, cache: TieredCache, ids):
    return model(ids[:, PREFIX:], past_key_values=cache.to_hf(), position_ids=cache.position_ids(NEW)).logits


def full_cache_logits(model, ids, masks=None):
    """Continue over the uncompressed cache, with optional (layer -> (kv_heads, rows)) rows masked."""
    past = prefill(model, ids)
    if not masks:
        return model(ids[:, PREFIX:], past_key_values=past).logits
    with masked_rows(model, masks):
        return model(ids[:, PREFIX:], past_key_values=past).logits


def per_head_keep(model, keep_rows, seed):
    gen = torch.Generator().manual_seed(seed)
    h = model.config.num_key_value_heads
    return [torch.stack([torch.randperm(PREFIX, generator=gen)[:keep_rows] for _ in range(h)]) for _ in range(model.config.num_hidden_layers)]


def dropped_masks(keep):
    masks = {}
    for layer, idx in enumerate(keep):
        m = torch.ones(idx.shape[0], PREFIX, dtype=torch.bool)
        m.scatter_(-1, idx, False)
        masks[layer] = m
    return masks


def test_keep_all_equals_plain_forward(tiny_model, token_ids):
    plain = tiny_model(token_ids).logits[:, PREFIX:]
    cache = TieredCache.from_hf(prefill(tiny_model, token_ids))
    assert (resume(tiny_model, cache, token_ids) - plain).abs().max() <= TOL


def test_compress_per_head_equals_masked_full_cache(tiny_model, token_ids):
    keep = per_head_keep(tiny_model, 25, seed=2)
    cache = TieredCache.from_hf(prefill(tiny_model, token_ids))
    cache.compress(keep)
    assert cache.rows == 25 and cache.warm.rows == PREFIX - 25
    expected = full_cache_logits(tiny_model, token_ids, dropped_masks(keep))
    unmasked = full_cache_logits(tiny_model, token_ids)
    got = resume(tiny_model, cache, token_ids)
    assert (got - expected).abs().max() <= TOL
    assert (got - unmasked).abs().max() > 1e-3  # the dropped rows did matter: the test can fail


def test_promote_all_restores_full_cache(tiny_model, token_ids):
    cache = TieredCache.from_hf(prefill(tiny_model, token_ids))
    cache.compress(per_head_keep(tiny_model, 20, seed=3), reserve=PREFIX - 20)
    slots, _ = cache.warm.candidates(0)
    cache.promote([cache.warm.candidates(i)[0] for i in range(cache.num_layers)])
    assert cache.rows == PREFIX and cache.warm.rows == 0
    # rows come back appended out of position order; attention must not care
    assert not torch.equal(cache.active.positions(0)[0, 0], torch.arange(PREFIX))
    assert (resume(tiny_model, cache, token_ids) - full_cache_logits(tiny_model, token_ids)).abs().max() <= TOL


def test_promote_subset_equals_full_cache_masking_the_rest(tiny_model, token_ids):
    keep = per_head_keep(tiny_model, 20, seed=4)
    cache = TieredCache.from_hf(prefill(tiny_model, token_ids))
    cache.compress(keep, reserve=6)
    gen = torch.Generator().manual_seed(5)
    promoted_positions = []
    for layer in range(cache.num_layers):
        _, positions = cache.warm.candidates(layer)
        pick = torch.stack([torch.randperm(positions.shape[-1], generator=gen)[:6] for _ in range(positions.shape[1])])
        promoted_positions.append(torch.gather(positions[0], -1, pick))
    cache.promote_positions(promoted_positions)
    masks = {}
    for layer in range(cache.num_layers):
        present = torch.zeros(cache.active.kv_heads, PREFIX, dtype=torch.bool)
        present.scatter_(-1, cache.active.positions(layer)[0].clamp_max(PREFIX - 1), True)
        masks[layer] = ~present
    assert cache.rows == 26
    assert (resume(tiny_model, cache, token_ids) - full_cache_logits(tiny_model, token_ids, masks)).abs().max() <= TOL


def test_bytes_come_from_the_tensors_held(tiny_model, token_ids):
    cfg = tiny_model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    row = 2 * head_dim * 4 * cfg.num_key_value_heads * cfg.num_hidden_layers  # fp32 K+V, one token, all layers/heads
    past = prefill(tiny_model, token_ids)
    original_ptrs = {layer.keys.data_ptr() for layer in past.layers}
    cache = TieredCache.from_hf(past)
    assert cache.bytes().active_kv == PREFIX * row
    cache.compress(per_head_keep(tiny_model, 25, seed=6))
    del past
    b = cache.bytes()
    assert b.active_kv == 25 * row and b.active_allocated == 25 * row  # no spare rows left behind on the device
    assert b.warm_kv == (PREFIX - 25) * row == b.warm_storage
    assert all(cache.active.keys(i).data_ptr() not in original_ptrs for i in range(cache.num_layers))
    assert all(cache.warm._k[i].data.device.type == "cpu" for i in range(cache.num_layers))
    cache.promote([cache.warm.candidates(i)[0][..., :5] for i in range(cache.num_layers)])
    assert cache.bytes().active_kv == 30 * row and cache.bytes().warm_kv == (PREFIX - 30) * row


def test_forks_are_independent(tiny_model, token_ids):
    root = TieredCache.from_hf(prefill(tiny_model, token_ids))
    root.compress(per_head_keep(tiny_model, 20, seed=7), reserve=8)
    snapshot = [root.active.keys(i).clone() for i in range(root.num_layers)]
    a, b = root.fork(), root.fork()
    slots = [root.warm.candidates(i)[0] for i in range(root.num_layers)]
    a.promote([s[..., :8] for s in slots])
    b.promote([s[..., -8:] for s in slots])
    b.drop_warm([s[..., :4] for s in slots])
    assert root.rows == 20 and root.warm.rows == 20
    assert all(torch.equal(root.active.keys(i), snapshot[i]) for i in range(root.num_layers))
    assert a.warm.rows == 12 and b.warm.rows == 8
    assert not torch.equal(a.active.positions(0)[..., 20:], b.active.positions(0)[..., 20:])
    assert torch.equal(a.active.positions(0)[..., :20], b.active.positions(0)[..., :20])
    # a resumed forward on one fork leaves the other's rows untouched
    hf = a.to_hf()
    tiny_model(token_ids[:, PREFIX:], past_key_values=hf, position_ids=a.position_ids(NEW))
    assert a.absorb(hf) == NEW and a.rows == 28 + NEW and b.rows == 28
    assert a.seen_tokens == PREFIX + NEW and b.seen_tokens == PREFIX


def test_absorb_then_continue_equals_one_long_forward(tiny_model, token_ids):
    plain = tiny_model(token_ids).logits
    cache = TieredCache.from_tensors(*zip(*[(layer.keys, layer.values) for layer in tiny_model(token_ids[:, :32], use_cache=True).past_key_values.layers]))
    for start in (32, 40):
        hf = cache.to_hf()
        out = tiny_model(token_ids[:, start : start + 8], past_key_values=hf, position_ids=cache.position_ids(8)).logits
        cache.absorb(hf)
        assert (out - plain[:, start : start + 8]).abs().max() <= TOL


def test_bad_selections_are_refused(tiny_model, token_ids):
    cache = TieredCache.from_hf(prefill(tiny_model, token_ids))
    with pytest.raises(ValueError, match="cannot keep 41 rows"):
        cache.compress(torch.arange(41))
    with pytest.raises(ValueError, match="same row twice"):
        cache.compress(torch.tensor([0, 0, 1]))
    with pytest.raises(IndexError, match="out of range"):
        cache.compress(torch.tensor([0, 40]))
    cache.compress(torch.arange(30))
    slots = cache.warm.candidates(0)[0][..., :2]
    cache.promote(slots)
    with pytest.raises(ValueError, match="already promoted"):
        cache.promote(slots)
    with pytest.raises(KeyError, match="not present"):
        cache.promote_positions(torch.tensor([0]))


def test_stacked_caches_append_into_their_headroom():
    """stack_to_hf(headroom=n): the next n rows are written in place behind the stacked rows
    (no copy of the layer per token); past the room it concatenates, with the same result."""
    from idlekv.cache.batch import stack_to_hf

    gen = torch.Generator().manual_seed(0)
    k = [torch.randn(1, 2, 7, 4, generator=gen) for _ in range(2)]
    caches = [TieredCache.from_tensors(k, [t * 2 for t in k]) for _ in range(2)]
    caches[0].compress(torch.arange(5)[None].expand(2, -1))  # 5 of the 7 rows, same original sequence
    hf, mask = stack_to_hf(caches, headroom=2)
    assert mask.tolist() == [[1] * 5 + [0] * 2, [1] * 7]
    layer = hf.layers[0]
    assert torch.equal(layer.keys[0, :, :5], caches[0].active.keys(0)[0]) and not layer.keys[0, :, 5:].any()
    start = layer.keys.data_ptr()
    new = [torch.randn(2, 2, m, 4, generator=gen) for m in (2, 3)]
    keys, values = layer.update(new[0], new[0] * 2)
    assert keys.data_ptr() == start and keys.shape[2] == 9 and torch.equal(keys[:, :, 7:], new[0])
    keys, values = layer.update(new[1], new[1] * 2)  # no room left: concatenated
    assert keys.shape[2] == 12 and torch.equal(keys[:, :, 9:], new[1]) and torch.equal(values[:, :, 7:9], new[0] * 2)
    assert hf.get_seq_length() == 12
