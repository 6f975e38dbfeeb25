import torch

from idlekv.attention import capture_queries, set_implementation
from idlekv.cache import TieredCache
from idlekv.cache.batch import stack_to_hf
from idlekv.grouped_sdpa import GROUPED_SDPA, register_grouped_sdpa


def _padded_resume_logits(model, implementation: str, prefix: torch.Tensor, turn: torch.Tensor) -> torch.Tensor:
    """Logits of a turn prefilled over two caches of different sizes (padded and masked), then one decode step."""
    with torch.no_grad():
        out = model(prefix, use_cache=True)
    keys = [layer.keys for layer in out.past_key_values.layers]
    values = [layer.values for layer in out.past_key_values.layers]
    caches = [TieredCache.from_tensors(keys, values) for _ in range(2)]
    heads = caches[0].active.kv_heads
    caches[0].compress(torch.arange(0, prefix.shape[1], 2)[None].expand(heads, -1))  # every other row
    set_implementation(model, implementation)
    try:
        with torch.no_grad():
            hf, mask = stack_to_hf(caches, headroom=turn.shape[1] + 1)
            mask = torch.cat([mask, mask.new_ones(2, turn.shape[1])], dim=1)
            positions = caches[0].position_ids(turn.shape[1]).expand(2, -1)
            prefill = model(turn.expand(2, -1), past_key_values=hf, position_ids=positions, attention_mask=mask, use_cache=True).logits
            step = model(prefill[:, -1:].argmax(-1), past_key_values=hf, position_ids=positions[:, -1:] + 1,
                         attention_mask=torch.cat([mask, mask.new_ones(2, 1)], dim=1), use_cache=True).logits
    finally:
        set_implementation(model, "sdpa")
    return torch.cat([prefill, step], dim=1)


def test_grouped_sdpa_gives_sdpa_bits_on_a_padded_resume(tiny_model, token_ids, monkeypatch):
    """The masked multi-token prefill (the case it changes: keys stay grouped) and the decode
    step (handed to transformers) give exactly the logits of transformers' sdpa."""
    name = register_grouped_sdpa()
    sdpa, grouped_calls = torch.nn.functional.scaled_dot_product_attention, []

    def recording(query, key, *args, **kwargs):
        grouped_calls.append(bool(kwargs.get("enable_gqa")) and key.shape[1] < query.shape[1])
        return sdpa(query, key, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", recording)
    turn = token_ids[:, 40:]
    grouped = _padded_resume_logits(tiny_model, name, token_ids[:, :40], turn)
    grouped_run, grouped_calls[:] = list(grouped_calls), []
    plain = _padded_resume_logits(tiny_model, "sdpa", token_ids[:, :40], turn)
    layers = tiny_model.config.num_hidden_layers
    # both group the unmasked prefix prefill (transformers does); only ours groups the padded turn
    assert grouped_run[: 2 * layers] == [True] * 2 * layers
    assert grouped_calls[: 2 * layers] == [True] * layers + [False] * layers
    assert torch.equal(grouped, plain)


def test_grouped_sdpa_is_what_load_model_asks_for_sdpa_and_capture_wraps_it(tmp_path, token_ids):
    from idlekv.models import load_model
    from idlekv.tiny_models import build_tiny_model

    build_tiny_model("qwen2", tmp_path)
    model = load_model(tmp_path, dtype="float32", device="cpu").model
    assert model.config._attn_implementation == GROUPED_SDPA
    assert load_model(tmp_path, device="cpu", attn_implementation="eager").model.config._attn_implementation == "eager"
    with capture_queries(model) as cap, torch.no_grad():
        model(token_ids)
    assert len(cap.queries) == model.config.num_hidden_layers
    assert model.config._attn_implementation == GROUPED_SDPA  # restored
