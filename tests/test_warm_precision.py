"""fp8 / int8 warm tiers: bytes and round-trip error.

Bounds: per-row scaling maps each row's largest magnitude to the format's largest value.
- int8: the rounding step is amax/127; uniform error has RMS step/sqrt(12). For a 128-dim
  row of roughly Gaussian keys amax is ~3 sigma, so RMS error ~ 3/127/3.46 ~ 0.7% of the row
  RMS: we require < 1% relative Frobenius error.
- fp8 e4m3 keeps 3 mantissa bits: relative rounding error up to 2^-4 per element, RMS about
  2^-4/sqrt(3) ~ 3.6%: we require < 5%.
"""

import pytest
import torch

from idlekv.cache import TieredCache, dequantize, quantize

BOUNDS = {"int8": 0.01, "fp8": 0.05}


def rel_err(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.mark.parametrize("precision", ["int8", "fp8"])
def test_quantize_round_trip_on_gaussian_rows(precision):
    x = torch.randn(1, 4, 512, 128, generator=torch.Generator().manual_seed(0))
    assert rel_err(dequantize(quantize(x, precision), torch.float32), x) < BOUNDS[precision]


@pytest.mark.parametrize("precision", ["int8", "fp8"])
def test_promoted_keys_of_a_real_model_within_bound(precision, tiny_model, token_ids):
    past = tiny_model(token_ids, use_cache=True).past_key_values
    originals = [layer.keys.clone() for layer in past.layers]
    values = [layer.values.clone() for layer in past.layers]
    cache = TieredCache.from_hf(past, warm_precision=precision)
    cache.compress(torch.arange(8), reserve=40)
    cache.promote([cache.warm.candidates(i)[0] for i in range(cache.num_layers)])
    for layer in range(cache.num_layers):
        pos = cache.active.positions(layer)[0, 0, 8:]
        restored = cache.active.keys(layer)[:, :, 8:]
        assert rel_err(restored, originals[layer][:, :, pos]) < BOUNDS[precision]
        assert rel_err(cache.active.values(layer)[:, :, 8:], values[layer][:, :, pos]) < BOUNDS[precision]
        assert rel_err(restored, originals[layer][:, :, pos]) > 0  # it really was quantized


@pytest.mark.parametrize("precision,data_bytes", [("model", 4), ("fp8", 1), ("int8", 1)])
def test_warm_bytes_count_the_stored_format(precision, data_bytes, tiny_model, token_ids):
    cfg = tiny_model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    cache = TieredCache.from_hf(tiny_model(token_ids, use_cache=True).past_key_values, warm_precision=precision)
    cache.compress(torch.arange(16))
    scale_bytes = 0 if precision == "model" else 4  # one fp32 scale per row of keys and of values
    per_row = 2 * (head_dim * data_bytes + scale_bytes) * cfg.num_key_value_heads * cfg.num_hidden_layers
    assert cache.bytes().warm_kv == (48 - 16) * per_row
