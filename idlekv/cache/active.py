"""The active tier: the KV rows the model attends to, on the model's device.

Per layer, keys/values (batch, kv_heads, rows, head_dim) and the original position of
every row (batch, kv_heads, rows): heads may keep different rows. Buffers may hold spare
capacity, so a turn's rows are written in place behind the cache instead of concatenated
onto a copy of it. Forks share buffers; rows appended to a shared tier (a repair's promoted
rows) go to the fork's own small `extra` segment, so waiting repaired forks of one compressed
cache hold K rows each, not a copy of the whole cache.
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
        self._extra: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None = None  # per layer (k, v, p)

    # --- geometry -------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return len(self._k)

    @property
    def rows(self) -> int:
        return self._len + self.extra_rows

    @property
    def extra_rows(self) -> int:
        return 0 if self._extra is None else self._extra[0][0].shape[-2]

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
    def head_dim(self) -> int:
        return self._k[0].shape[-1]

    @property
    def device(self) -> torch.device:
        return self._k[0].device

    @property
    def dtype(self) -> torch.dtype:
        return self._k[0].dtype

    def keys(self, layer: int) -> torch.Tensor:
        self._materialize()
        return self._k[layer][:, :, : self._len]

    def values(self, layer: int) -> torch.Tensor:
        self._materialize()
        return self._v[layer][:, :, : self._len]

    def positions(self, layer: int) -> torch.Tensor:
        base = self._p[layer][:, :, : self._len]
        return base if self._extra is None else torch.cat([base, self._extra[layer][2]], dim=-1)

    def segments(self, layer: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """The layer's rows as (keys, values, positions) views, without materialising a fork's extra rows."""
        base = (self._k[layer][:, :, : self._len], self._v[layer][:, :, : self._len], self._p[layer][:, :, : self._len])
        return [base] if self._extra is None else [base, self._extra[layer]]

    # --- bytes, from the tensors held -------------------------------------------------
    @property
    def kv_nbytes(self) -> int:
        """Bytes of the keys and values of the rows in use."""
        return 2 * self.num_layers * self.batch * self.kv_heads * self.rows * self.head_dim * self._k[0].element_size()

    @property
    def allocated_nbytes(self) -> int:
        """Bytes of the key/value buffers on the device, spare capacity and a fork's extra rows included."""
        base = sum(k.untyped_storage().nbytes() + v.untyped_storage().nbytes() for k, v in zip(self._k, self._v))
        extra = 0 if self._extra is None else sum(k.numel() * k.element_size() * 2 for k, _, _ in self._extra)
        return base + extra

    # --- operations -------------------------------------------------------------------
    def split(self, keep: Selection, reserve: int = 0) -> tuple["ActiveTier", list[tuple[torch.Tensor, ...]]]:
        """Keep `keep` rows (with room for `reserve` more); return the evicted rows per layer."""
        self._materialize()
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

    def gather(self, keep: Selection, reserve: int = 0) -> "ActiveTier":
        """A new tier of the `keep` rows only (nothing evicted anywhere)."""
        self._materialize()
        idx = [i.to(self.device).sort(dim=-1).values for i in keep]
        for layer, i in enumerate(idx):
            check_distinct_in_range(i, self._len, f"layer {layer} keep set")
        return ActiveTier([gather_rows(k, i) for k, i in zip(self._k, idx)], [gather_rows(v, i) for v, i in zip(self._v, idx)],
                          [gather_rows(p, i) for p, i in zip(self._p, idx)], capacity=keep[0].shape[-1] + reserve)

    def append(self, keys: Sequence[torch.Tensor], values: Sequence[torch.Tensor], positions: Sequence[torch.Tensor]) -> None:
        """Append rows to every layer: in place when the buffers are this tier's own, else into the fork's extra rows."""
        extra = {k.shape[-2] for k in keys}
        if len(extra) != 1:
            raise ValueError(f"every layer must receive the same number of rows; got {sorted(extra)}")
        extra = extra.pop()
        if self._shared:
            rows = [(k.to(self.device, self.dtype), v.to(self.device, self.dtype), p.to(self.device))
                    for k, v, p in zip(keys, values, positions)]
            if self._extra is not None:
                rows = [tuple(torch.cat([a, b], dim=2) for a, b in zip(old, new))
                        for old, new in zip(self._extra, rows)]
            self._extra = rows
            return
        self.reserve(extra)
        new_len = self._len + extra
        for i in range(self.num_layers):
            self._k[i][:, :, self._len : new_len] = keys[i].to(self.device, self.dtype)
            self._v[i][:, :, self._len : new_len] = values[i].to(self.device, self.dtype)
            self._p[i][:, :, self._len : new_len] = positions[i].to(self.device)
        self._len = new_len

    def open_rows(self, count: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Per layer, writable (keys, values, positions) views of `count` new rows, taken in by commit_rows():
        the tier's own reserved rows, or a fork's new extra rows (the shared buffers are never written)."""
        if self._shared:
            b, h, d = self.batch, self.kv_heads, self.head_dim
            self._opened = [(torch.empty(b, h, count, d, dtype=self.dtype, device=self.device),
                             torch.empty(b, h, count, d, dtype=self.dtype, device=self.device),
                             torch.empty(b, h, count, dtype=torch.long, device=self.device)) for _ in range(self.num_layers)]
            return self._opened
        self.reserve(count)
        end = self._len + count
        return [(k[:, :, self._len : end], v[:, :, self._len : end], p[:, :, self._len : end])
                for k, v, p in zip(self._k, self._v, self._p)]

    def commit_rows(self, count: int) -> None:
        """Take in the rows written into open_rows(count)'s views."""
        if not self._shared:
            self._len += count
            return
        opened, self._opened = self._opened, None
        self._extra = opened if self._extra is None else [tuple(torch.cat([a, b], dim=2) for a, b in zip(old, new))
                                                          for old, new in zip(self._extra, opened)]

    def hold_quantized(self, full: Sequence[torch.Tensor], precision: str) -> int:
        """Rows where full[l] (kv_heads, rows) is False take their quantize -> dequantize round trip in place:
        the values a mixed-precision store (idlekv/cache/mixed.py) gives attention. Returns the bytes such a
        store saves (full rows minus quantized rows and their scales), which the tensors here still hold."""
        from idlekv.cache.quant import dequantize, quantize

        self.own()
        saved = 0
        for layer, mask in enumerate(full):
            low = ~mask.to(self.device)
            heads = torch.arange(low.shape[0], device=self.device)[:, None].expand_as(low)[low]
            rows = torch.arange(low.shape[1], device=self.device).expand_as(low)[low]
            for buf in (self._k[layer], self._v[layer]):
                picked = buf[:, heads, rows]  # (batch, n, head_dim)
                stored = quantize(picked, precision)
                buf[:, heads, rows] = dequantize(stored, self.dtype)
                saved += picked.numel() * picked.element_size() - stored.nbytes
        return saved

    def written_in_place(self, rows: int, positions: torch.Tensor) -> None:
        """Take in `rows` rows a forward already wrote behind this tier's rows in its own buffers."""
        if self._shared or self._extra is not None or self._len + rows > self.capacity:
            raise ValueError("rows can only be written in place into a tier's own spare capacity")
        for p in self._p:
            p[:, :, self._len : self._len + rows] = positions.to(self.device)
        self._len += rows

    def reserve(self, rows: int) -> None:
        """Own the buffers with room for `rows` more rows (one reallocation at most)."""
        if self._shared or self._extra is not None or self._len + rows > self.capacity:
            self._reallocate(max(self.capacity, self.rows + rows))

    def own(self) -> None:
        """Materialise a fork's shared buffers and extra rows now (keeping capacity), not at the next use."""
        if self._shared or self._extra is not None:
            self._reallocate(max(self.capacity, self.rows))

    def _materialize(self) -> None:
        if self._extra is not None:
            self.own()

    def _reallocate(self, capacity: int) -> None:
        layers = [self.segments(i) for i in range(self.num_layers)]
        cat = lambda parts: parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)  # noqa: E731
        self._k = [_with_capacity(cat([s[0] for s in seg]), capacity, force_copy=True) for seg in layers]
        self._v = [_with_capacity(cat([s[1] for s in seg]), capacity, force_copy=True) for seg in layers]
        self._p = [_with_capacity(cat([s[2] for s in seg]), capacity, force_copy=True) for seg in layers]
        self._len, self._extra, self._shared = sum(s[0].shape[-2] for s in layers[0]), None, False

    def fork(self) -> "ActiveTier":
        twin = object.__new__(ActiveTier)
        twin._k, twin._v, twin._p, twin._len = list(self._k), list(self._v), list(self._p), self._len
        twin._extra = None if self._extra is None else list(self._extra)  # extra tensors are replaced, never written
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
