"""Row selections: per layer, a (batch, kv_heads, k) tensor of row indices into a tier.

Every head of every layer selects the same number of rows: transformers sizes the
attention mask from one layer's length, so caches must stay rectangular.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

Selection = list[torch.Tensor]


def normalize_selection(
    selection: torch.Tensor | Sequence[torch.Tensor], num_layers: int, batch: int, kv_heads: int
) -> Selection:
    """Broadcast (k,), (kv_heads, k) or (batch, kv_heads, k), given once or per layer, to a per-layer list."""
    per_layer = [selection] * num_layers if isinstance(selection, torch.Tensor) else list(selection)
    if len(per_layer) != num_layers:
        raise ValueError(f"selection has {len(per_layer)} layers, the cache has {num_layers}")
    out = []
    for layer, idx in enumerate(per_layer):
        idx = torch.as_tensor(idx, dtype=torch.long)
        if idx.dim() == 1:
            idx = idx.expand(batch, kv_heads, -1)
        elif idx.dim() == 2:
            idx = idx.expand(batch, -1, -1)
        if idx.dim() != 3 or idx.shape[:2] != (batch, kv_heads):
            raise ValueError(
                f"layer {layer}: selection shape {tuple(idx.shape)} does not broadcast to (batch={batch}, kv_heads={kv_heads}, k)"
            )
        out.append(idx)
    counts = {idx.shape[-1] for idx in out}
    if len(counts) > 1:
        raise ValueError(f"every layer must select the same number of rows; got {sorted(counts)}")
    return out


def check_distinct_in_range(idx: torch.Tensor, size: int, what: str) -> None:
    if idx.numel() == 0:
        return
    if int(idx.min()) < 0 or int(idx.max()) >= size:
        raise IndexError(f"{what}: row index out of range [0, {size}): min {int(idx.min())}, max {int(idx.max())}")
    sorted_idx = idx.sort(dim=-1).values
    if bool((sorted_idx[..., 1:] == sorted_idx[..., :-1]).any()):
        raise ValueError(f"{what}: a head selects the same row twice")


def complement(idx: torch.Tensor, size: int) -> torch.Tensor:
    """Rows of [0, size) not in idx, per (batch, head), in ascending order."""
    mask = torch.ones(*idx.shape[:-1], size, dtype=torch.bool, device=idx.device)
    mask.scatter_(-1, idx, False)
    n_rest = size - idx.shape[-1]
    # A stable sort puts the True (kept-out) rows first, in ascending index order.
    return torch.sort((~mask).to(torch.int8), dim=-1, stable=True).indices[..., :n_rest]


def gather_rows(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """t (B, H, N, D) or (B, H, N); idx (B, H, k) -> rows (B, H, k[, D])."""
    if t.dim() == 3:
        return torch.gather(t, 2, idx)
    if t.dtype.itemsize == 1 and t.dtype not in (torch.int8, torch.uint8, torch.bool):
        # float8 has no gather kernel; its bytes gather the same through a uint8 view.
        return gather_rows(t.view(torch.uint8), idx).view(t.dtype)
    b, h, n, d = t.shape
    if t.is_contiguous():
        # index_select copies whole rows (memcpy-like); gather with an expanded index is ~3x slower.
        offsets = (torch.arange(b * h, device=idx.device) * n).view(b, h, 1)
        flat = (idx.to(t.device) + offsets.to(t.device)).reshape(-1)
        return t.view(b * h * n, d).index_select(0, flat).view(b, h, idx.shape[-1], d)
    return torch.gather(t, 2, idx.unsqueeze(-1).expand(-1, -1, -1, d))
