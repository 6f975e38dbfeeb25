"""The active tier: the KV rows the model attends to, on the model's device.

Per layer, keys/values (batch, kv_heads, rows, head_dim) and the original position of
every row (batch, kv_heads, rows): heads may keep different rows. Buffers may hold spare
capacity so that promoting K rows into a budget reserved at compression time writes K
rows instead of copying the whole cache. Forks share buffers copy-on-write.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from idlekv.cache.selection import Selection, check_distinct_in_range, complement, gather_rows


class ActiveTier:
    def __init__(
        self,
        keys: Sequence[torch.Tensor],
        values: Sequence[torch.Tensor],
        positions: Sequence[torch.Tensor],
        capacity: int | None = None,
    ):
        lengths = {k.shape[-2] for k in keys} | {v.shape[-2] for v in values} | {p.shape[-1] for p in positions}
        if len(lengths) != 1:
            raise ValueError(f"all layers must hold the same number of rows; got lengths {sorted(lengths)}")
        self._len = lengths.pop()
        capacity = max(capacity or self._len, self._len)
        self._k = [_with_capacity(k, capacity) for k in keys]
        self._v = [_with_capacity(v, capacity) for v in values]
        self._p = [_with_capacity(p.to(k.device), capacity) for p, k in zip(positions, keys)]
        self._shared = False

    # --- geometry -------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return len(self._k)

    @property
    def rows(self) -> int:
        return self._len

    @property
    def capacity(self) -> int:
        return self._k[0].shape[-2]

    @property
    def batch(self) -> int:
        return self._k[0].shape[0]

    @property
    def kv_heads(self) -> int:
        return self._k[0].shape[1]

    @property
    def device(self) -> torch.device:
        return self._k[0].device

    @property
    def dtype(self) -> torch.dtype:
        return self._k[0].dtype

    def keys(self, layer: int) -> torch.Tensor:
        return self._k[layer][:, :, : self._len]

    def values(self, layer: int) -> torch.Tensor:
        return self._v[layer][:, :, : self._len]

    def positions(self, layer: int) -> torch.Tensor:
        return self._p[layer][:, :, : self._len]

    # --- bytes, from the tensors held -------------------------------------------------
    @property
    def kv_nbytes(self) -> int:
        """Bytes of the keys and values of the rows in use."""
        return sum(self.keys(i).numel() * self._k[i].element_size() * 2 for i in range(self.num_layers))

    @property
    def allocated_nbytes(self) -> int:
        """Bytes of the key/value buffers on the device, spare capacity included."""
        return sum(k.untyped_storage().nbytes() + v.untyped_storage().nbytes() for k, v in zip(self._k, self._v))

    # --- operations -------------------------------------------------------------------
    def split(self, keep: Selection, reserve: int = 0) -> tuple["ActiveTier", list[tuple[torch.Tensor, ...]]]:
        """Keep `keep` rows (with room for `reserve` more); return the evicted rows per layer."""
        kept_k, kept_v, kept_p, evicted = [], [], [], []
        for layer, idx in enumerate(keep):
            idx = idx.to(self.device)
            check_distinct_in_range(idx, self._len, f"layer {layer} keep set")
            idx = idx.sort(dim=-1).values  # keep rows in their original order (only for readability)
            out = complement(idx, self._len)
            # Gather from the whole buffers (contiguous: fast path); indices are < rows.
            k, v, p = self._k[layer], self._v[layer], self._p[layer]
            kept_k.append(gather_rows(k, idx))
            kept_v.append(gather_rows(v, idx))
            kept_p.append(gather_rows(p, idx))
            evicted.append((gather_rows(k, out), gather_rows(v, out), gather_rows(p, out)))
        kept_rows = keep[0].shape[-1]
        return ActiveTier(kept_k, kept_v, kept_p, capacity=kept_rows + reserve), evicted

    def append(self, keys: Sequence[torch.Tensor], values: Sequence[torch.Tensor], positions: Sequence[torch.Tensor]) -> None:
        """Append rows to every layer (in place; reallocates when shared or full)."""
        extra = {k.shape[-2] for k in keys}
        if len(extra) != 1:
            raise ValueError(f"every layer must receive the same number of rows; got {sorted(extra)}")
        extra = extra.pop()
        new_len = self._len + extra
        if self._shared or new_len > self.capacity:
            capacity = max(new_len, self.capacity)
            self._k = [_with_capacity(self.keys(i), capacity, force_copy=True) for i in range(self.num_layers)]
            self._v = [_with_capacity(self.values(i), capacity, force_copy=True) for i in range(self.num_layers)]
            self._p = [_with_capacity(self.positions(i), capacity, force_copy=True) for i in range(self.num_layers)]
            self._shared = False
        for i in range(self.num_layers):
            self._k[i][:, :, self._len : new_len] = keys[i].to(self.device, self.dtype)
            self._v[i][:, :, self._len : new_len] = values[i].to(self.device, self.dtype)
            self._p[i][:, :, self._len : new_len] = positions[i].to(self.device)
        self._len = new_len

    def own(self) -> None:
        """Materialise a fork's copy-on-write buffers now (keeping capacity), not at the next append."""
        if self._shared:
            self.append([k[:, :, :0] for k in self._k], [v[:, :, :0] for v in self._v], [p[:, :, :0] for p in self._p])

    def fork(self) -> "ActiveTier":
        twin = object.__new__(ActiveTier)
        twin._k, twin._v, twin._p, twin._len = list(self._k), list(self._v), list(self._p), self._len
        twin._shared = self._shared = True
        return twin


def _with_capacity(t: torch.Tensor, capacity: int, force_copy: bool = False) -> torch.Tensor:
    rows = t.shape[2]
    if capacity == rows and t.is_contiguous() and not force_copy:
        return t
    buf = torch.empty(*t.shape[:2], capacity, *t.shape[3:], dtype=t.dtype, device=t.device)
    buf[:, :, :rows] = t
    # Touch the reserved rows now: the budget is really held, and promotion later does not
    # pay first-touch page faults on host memory.
    buf[:, :, rows:].zero_()
    return buf
