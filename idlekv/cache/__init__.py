"""The tiered KV cache: active rows on the model's device, evicted rows in a host warm tier."""

from idlekv.cache.active import ActiveTier
from idlekv.cache.mixed import MixedBytes, MixedPrecisionCache
from idlekv.cache.quant import PRECISIONS, dequantize, quantize
from idlekv.cache.tiered import TierBytes, TieredCache
from idlekv.cache.warm import WarmTier

__all__ = ["ActiveTier", "MixedBytes", "MixedPrecisionCache", "PRECISIONS", "TierBytes", "TieredCache", "WarmTier", "dequantize", "quantize"]
