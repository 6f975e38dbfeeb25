"""The matmul ceiling an exact scorer works against, measured on the machine at hand.

Exact scoring is one logit per (query head, query token, candidate row): its FLOPs are fixed,
so how much faster one scorer can be than another is bounded by how fast the hardware
multiplies in each one's dtype. Measuring both ceilings in the same run tells a reader
whether a ratio is limited by the code or by the machine.
"""

from __future__ import annotations

import torch

from idlekv.bench.timing import median_seconds


def scoring_flops(layers: int, query_heads: int, queries: int, rows: int, head_dim: int) -> float:
    """Multiply-adds x 2 of the logits q.k over every row, summed over layers."""
    return 2.0 * layers * query_heads * queries * rows * head_dim


def matmul_gflops(kv_heads: int, group_rows: int, rows: int, head_dim: int, dtype: torch.dtype, device: str, reps: int = 3,
                  chunk_rows: int | None = None) -> float:
    """GFLOP/s of one layer's grouped logits matmul over `rows` keys: (kv_heads, group_rows, d) @
    (kv_heads, d, rows) in one product, or, with `chunk_rows`, keys-first chunk by chunk into
    one reused output, (kv_heads, chunk, d) @ (kv_heads, d, group_rows), as ours runs."""
    gen = torch.Generator().manual_seed(0)
    if chunk_rows is None:
        q = torch.randn(kv_heads, group_rows, head_dim, generator=gen).to(device, dtype)
        k = torch.randn(kv_heads, head_dim, rows, generator=gen).to(device, dtype)
        seconds = median_seconds(lambda: q @ k, reps, device)
    else:
        q = torch.randn(kv_heads, head_dim, group_rows, generator=gen).to(device, dtype)
        k = torch.randn(kv_heads, rows, head_dim, generator=gen).to(device, dtype)
        out = torch.empty(kv_heads, chunk_rows, group_rows, dtype=dtype, device=device)

        def chunks():
            for start in range(0, rows, chunk_rows):
                part = k[:, start : start + chunk_rows]
                torch.bmm(part, q, out=out[:, : part.shape[1]])

        seconds = median_seconds(chunks, reps, device)
    return 2.0 * kv_heads * group_rows * rows * head_dim / seconds / 1e9
