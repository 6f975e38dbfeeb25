"""The warm tier: evicted KV rows in host memory (pinned when the model runs on CUDA).

Storage per layer is written once per eviction and never modified; which rows are still
in the tier is a per-fork `present` mask. Forks therefore share the host bytes and stay
independent, and promotion never rewrites host memory. `compact()` reclaims the storage
of rows no fork needs any more.
"""

from __future__ import annotations

import torch

from idlekv.cache.quant import PRECISIONS, QuantizedRows, dequantize, quantize
from idlekv.cache.selection import Selection, gather_rows
from idlekv.cache.transfer import Staging, TransferPlan, Uploader, host_cat, to_host


class WarmTier:
    def __init__(self, num_layers: int, precision: str = "model", plan: TransferPlan | None = None):
        if precision not in PRECISIONS:
            raise ValueError(f"unknown warm precision {precision!r}; choose one of {PRECISIONS}")
        self.precision = precision
        self.plan = plan or TransferPlan.for_device("cpu")
        self.upload = Uploader(self.plan)
        self._k: list[QuantizedRows | None] = [None] * num_layers
        self._v: list[QuantizedRows | None] = [None] * num_layers
        self._p: list[torch.Tensor | None] = [None] * num_layers
        self._present: list[torch.Tensor | None] = [None] * num_layers
        self.digest = None  # a PageDigest once keep_digest() is called (idlekv/repair/digest.py)
        self._owns_present = True  # False while a fork shares the masks
        self._stamps: torch.Tensor | None = None  # check()'s scratch
        self.staging = Staging(self.plan)

    @property
    def num_layers(self) -> int:
        return len(self._k)

    def storage_rows(self, layer: int) -> int:
        return 0 if self._p[layer] is None else self._p[layer].shape[-1]

    @property
    def rows(self) -> int:
        """Rows present per (batch, head); equal for every layer and head by construction."""
        if self._present[0] is None:
            return 0
        counts = self._present[0].sum(-1)
        return int(counts.flatten()[0])

    def keep_digest(self, page_rows: int) -> None:
        """From now on, rows entering this tier also get page digests (min/max keys) on the model's device."""
        from idlekv.repair.digest import PageDigest

        if self.storage_rows(0):
            raise ValueError("keep_digest() must be called before the first eviction")
        self.digest = PageDigest(self.num_layers, page_rows)

    def present(self, layer: int) -> torch.Tensor:
        """(batch, kv_heads, storage_rows) bool: which storage slots this fork still holds."""
        return self._present[layer]

    # --- bytes, from the tensors held -------------------------------------------------
    def _row_bytes(self, layer: int) -> int:
        """Stored bytes of one (batch, head, row) of keys + values, scales included."""
        total = 0
        for q in (self._k[layer], self._v[layer]):
            total += q.data.shape[-1] * q.data.element_size()
            if q.scale is not None:
                total += q.scale.shape[-1] * q.scale.element_size()
        return total

    @property
    def kv_nbytes(self) -> int:
        """Bytes of the rows present in this tier (view of this fork)."""
        return sum(
            int(self._present[i].sum()) * self._row_bytes(i) for i in range(self.num_layers) if self._present[i] is not None
        )

    @property
    def storage_nbytes(self) -> int:
        """Bytes of host storage held (shared with forks), keys + values + scales."""
        return sum(self._k[i].nbytes + self._v[i].nbytes for i in range(self.num_layers) if self._k[i] is not None)

    # --- operations -------------------------------------------------------------------
    def add(self, layer: int, keys: torch.Tensor, values: torch.Tensor, positions: torch.Tensor) -> None:
        """Store evicted rows: quantized where they are (gathered on the device), then one copy into host storage."""
        if self.digest is not None:
            self.digest.add(layer, keys, self.storage_rows(layer))
        k = quantize(keys, self.precision).map(lambda t: to_host(t, self.plan))
        v = quantize(values, self.precision).map(lambda t: to_host(t, self.plan))
        p = positions.to("cpu")
        present = torch.ones(p.shape, dtype=torch.bool)
        if self._k[layer] is not None:
            k = _cat(self._k[layer], k, self.plan)
            v = _cat(self._v[layer], v, self.plan)
            p = torch.cat([self._p[layer], p], dim=-1)
            present = torch.cat([self._present[layer], present], dim=-1)  # a new tensor: this fork's own
        self._k[layer], self._v[layer], self._p[layer], self._present[layer] = k, v, p, present

    def candidates(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(slots, positions) of the rows present, each (batch, kv_heads, rows), ascending slot."""
        if self._present[layer] is None:
            empty = torch.empty(0, 0, 0, dtype=torch.long)
            return empty, empty
        present = self._present[layer]
        b, h, n = present.shape
        if bool(present.all()):  # nothing promoted yet: every slot, without a scan
            slots = torch.arange(n).expand(b, h, n)
        else:  # nonzero lists slots row-major: ascending within each (batch, head), equal counts per head
            slots = present.nonzero()[:, -1].view(b, h, -1)
        return slots, gather_rows(self._p[layer], slots)

    def positions(self, layer: int) -> torch.Tensor:
        """Original positions of every storage slot (batch, kv_heads, storage_rows)."""
        return self._p[layer]

    def slots_for_positions(self, layer: int, positions: torch.Tensor) -> torch.Tensor:
        """Map original positions (batch, kv_heads, k) to the present slots that hold them."""
        slots, stored = self.candidates(layer)
        order = stored.argsort(dim=-1)
        sorted_pos = torch.gather(stored, -1, order)
        where = torch.searchsorted(sorted_pos, positions.contiguous()).clamp_max(max(sorted_pos.shape[-1] - 1, 0))
        found = torch.gather(sorted_pos, -1, where) == positions
        if not bool(found.all()):
            missing = positions[~found][:5].tolist()
            raise KeyError(f"layer {layer}: positions not present in the warm tier, e.g. {missing}")
        return torch.gather(slots, -1, torch.gather(order, -1, where))

    def take_into(self, slots: Selection, dest: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> None:
        """Remove the selected rows (checked by check()) from this tier and write them, dequantized, into `dest`:
        per layer the (keys, values, positions) views of the active rows reserved for them.

        The rows are gathered on the host into a contiguous staging buffer, moved in one transfer,
        dequantized on the device and written once into the reserved rows. On CUDA the buffer is pinned
        and holds every layer (one upload). On the CPU it stages one layer at a time, so the
        buffer is still in cache when the rows are written (gather + write alone, K=1024: 0.33-0.42 of
        memcpy with every layer in one buffer, 0.47-0.56 a layer at a time; docs/runtime.md)."""
        layers = range(self.num_layers)
        for group in ([layers] if self.plan.pin_host else [[layer] for layer in layers]):
            staged = iter(self.staging.gather([(stored, slots[layer]) for layer in group for stored in self._stored(layer)]))
            for layer in group:
                k_dest, v_dest, p_dest = dest[layer]
                _dequantize_into(k_dest, next(staged))
                _dequantize_into(v_dest, next(staged))
                p_dest.copy_(next(staged).data[..., 0])  # positions ride in the same buffer and transfer
        self._mark_absent(slots)

    def _stored(self, layer: int) -> tuple[QuantizedRows, QuantizedRows, QuantizedRows]:
        """The layer's keys, values and positions as stored rows (positions as rows of one long)."""
        return self._k[layer], self._v[layer], QuantizedRows(self._p[layer].unsqueeze(-1), None)

    def drop(self, slots: Selection) -> None:
        """Forget rows (this fork only); their storage is reclaimed by `compact()`."""
        self.check(slots)
        self._mark_absent(slots)

    def _mark_absent(self, slots: Selection) -> None:
        """Clear the rows' present bits: in place when this fork owns its masks, else on its own copy."""
        for layer, idx in enumerate(slots):
            if self._owns_present:
                self._present[layer].scatter_(-1, idx, False)
            else:
                self._present[layer] = self._present[layer].scatter(-1, idx, False)
        self._owns_present = True

    def fork(self) -> "WarmTier":
        twin = object.__new__(WarmTier)
        twin.precision, twin.plan, twin.upload = self.precision, self.plan, Uploader(self.plan)
        twin._k, twin._v, twin._p = list(self._k), list(self._v), list(self._p)
        twin._present = list(self._present)  # shared until either side marks a row absent (then it copies)
        twin._owns_present = self._owns_present = False
        twin.staging, twin._stamps = self.staging, self._stamps  # scratch: forks promote one at a time
        twin.digest = None if self.digest is None else self.digest.fork()
        return twin

    def compact(self) -> None:
        """Rewrite storage to hold only the rows present (this fork's own copy); a digest is rebuilt
        over the new slots from the stored keys."""
        for layer in range(self.num_layers):
            if self._present[layer] is None:
                continue
            slots, _ = self.candidates(layer)
            keep = lambda t: to_host(gather_rows(t, slots), self.plan)  # noqa: E731
            self._k[layer], self._v[layer] = self._k[layer].map(keep), self._v[layer].map(keep)
            self._p[layer] = gather_rows(self._p[layer], slots)
            self._present[layer] = torch.ones(self._p[layer].shape, dtype=torch.bool)
        if self.digest is not None:
            self.digest = type(self.digest)(self.num_layers, self.digest.page_rows)
            for layer in range(self.num_layers):
                if self._k[layer] is not None:
                    stored = dequantize(self._k[layer].map(self.upload), torch.float32)
                    self.digest.add(layer, stored, 0)

    def check(self, slots: Selection) -> None:
        """Refuse a selection with a row out of range, twice in a head, or no longer present.

        Distinct rows without a sort: each head writes its rows' ranks into a scratch row of the
        storage's length and reads them back; a row selected twice reads back the other rank."""
        for layer, idx in enumerate(slots):
            if self._present[layer] is None:
                raise ValueError("the warm tier is empty")
            if idx.numel() == 0:
                continue
            size = self.storage_rows(layer)
            if int(idx.min()) < 0 or int(idx.max()) >= size:
                raise IndexError(f"layer {layer} warm selection: row index out of range [0, {size}): "
                                 f"min {int(idx.min())}, max {int(idx.max())}")
            ranks = torch.arange(idx.shape[-1], dtype=torch.int32).expand(idx.shape)
            stamps = self._scratch(self._present[layer].shape).scatter_(-1, idx, ranks)
            if not bool(torch.equal(torch.gather(stamps, -1, idx), ranks)):
                raise ValueError(f"layer {layer} warm selection: a head selects the same row twice")
            if not bool(torch.gather(self._present[layer], -1, idx).all()):
                raise ValueError(f"layer {layer}: a selected warm row was already promoted or dropped")

    def _scratch(self, shape) -> torch.Tensor:
        if self._stamps is None or self._stamps.shape != shape:
            self._stamps = torch.zeros(shape, dtype=torch.int32)
        return self._stamps


def _dequantize_into(dest: torch.Tensor, rows: QuantizedRows) -> None:
    """dequantize(rows) written into `dest`: the product is computed in fp32 and rounded once, as
    dequantize() does, without a temporary where torch multiplies the storage dtype (int8, not fp8)."""
    if rows.scale is None:
        dest.copy_(rows.data)
    elif rows.data.dtype == torch.int8:
        torch.mul(rows.data, rows.scale, out=dest)
    else:
        dest.copy_(dequantize(rows, dest.dtype))


def _cat(a: QuantizedRows, b: QuantizedRows, plan: TransferPlan) -> QuantizedRows:
    data = host_cat([a.data, b.data], 2, plan)
    scale = None if a.scale is None else host_cat([a.scale, b.scale], 2, plan)
    return QuantizedRows(data, scale)
