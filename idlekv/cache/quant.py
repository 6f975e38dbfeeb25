"""Per-row quantization of KV rows for the warm tier.

One scale per (batch, head, row) over head_dim: rows are promoted individually, so each
must dequantize on its own. Quantization runs where the rows are (the model's device)
before they cross to the host, so only the compact bytes travel.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

PRECISIONS = ("model", "fp8", "int8")
FP8_MAX = 448.0  # largest finite float8_e4m3fn value
INT8_MAX = 127.0


@dataclass
class QuantizedRows:
    """Rows as stored: `data` in the storage dtype, `scale` (..., 1) float32 or None."""

    data: torch.Tensor
    scale: torch.Tensor | None

    @property
    def nbytes(self) -> int:
        return self.data.numel() * self.data.element_size() + (
            0 if self.scale is None else self.scale.numel() * self.scale.element_size()
        )

    def map(self, fn) -> "QuantizedRows":
        """The same rows with `fn` applied to the data and the scales (a move, a gather)."""
        return QuantizedRows(fn(self.data), None if self.scale is None else fn(self.scale))


def quantize(rows: torch.Tensor, precision: str) -> QuantizedRows:
    if precision == "model":
        return QuantizedRows(rows, None)
    amax = rows.detach().abs().amax(dim=-1, keepdim=True).float().clamp_min(1e-12)
    if precision == "fp8":
        scale = amax / FP8_MAX
        return QuantizedRows((rows.float() / scale).to(torch.float8_e4m3fn), scale)
    if precision == "int8":
        scale = amax / INT8_MAX
        return QuantizedRows((rows.float() / scale).round().clamp(-INT8_MAX, INT8_MAX).to(torch.int8), scale)
    raise ValueError(f"unknown warm precision {precision!r}; choose one of {PRECISIONS}")


def dequantize(rows: QuantizedRows, dtype: torch.dtype) -> torch.Tensor:
    if rows.scale is None:
        return rows.data.to(dtype)
    return (rows.data.float() * rows.scale).to(dtype)
