import torch

from idlekv.attention import capture_queries
from idlekv.cache import TieredCache


def test_capture_keeps_the_kernel_and_matches_eager(tiny_model, token_ids):
    reference = tiny_model(token_ids).logits
    with capture_queries(tiny_model, attentions=True) as cap:
        logits = tiny_model(token_ids).logits
    assert tiny_model.config._attn_implementation == "sdpa"
    assert torch.equal(logits, reference)
    n_heads = tiny_model.config.num_attention_heads
    assert sorted(cap.queries) == list(range(tiny_model.config.num_hidden_layers))
    assert cap.queries[0].shape[:3] == (1, n_heads, token_ids.shape[1])
    tiny_model.set_attn_implementation("eager")
    try:
        eager = tiny_model(token_ids, output_attentions=True).attentions
    finally:
        tiny_model.set_attn_implementation("sdpa")
    for layer, weights in enumerate(eager):
        assert (cap.attentions[layer] - weights).abs().max() < 1e-5


def test_captured_queries_are_post_rope_and_explain_the_attention(tiny_model, token_ids):
    """q.k over the pruned cache's (post-RoPE) keys reproduces the captured softmax."""
    cache = TieredCache.from_hf(tiny_model(token_ids[:, :40], use_cache=True).past_key_values)
    cache.compress(torch.arange(0, 40, 2))
    hf = cache.to_hf()
    with capture_queries(tiny_model, layers=[1], attentions=True, last_n=3) as cap:
        tiny_model(token_ids[:, 40:], past_key_values=hf, position_ids=cache.position_ids(8))
    assert list(cap.queries) == [1] and cap.queries[1].shape[2] == 3
    q = cap.queries[1]
    keys = hf.layers[1].keys.repeat_interleave(q.shape[1] // hf.layers[1].keys.shape[1], dim=1)
    logits = q @ keys.transpose(-1, -2) * q.shape[-1] ** -0.5
    causal = torch.arange(keys.shape[2])[None, :] <= torch.arange(keys.shape[2] - 3, keys.shape[2])[:, None]
    expected = torch.softmax(logits.masked_fill(~causal, float("-inf")), dim=-1)
    assert (expected - cap.attentions[1]).abs().max() < 1e-5
