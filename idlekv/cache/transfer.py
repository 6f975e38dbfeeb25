"""Moving KV rows between host memory and the model's device, decided once by the target.

One `TransferPlan` per model device says whether host buffers are page-locked and uploads
asynchronous (CUDA) or plain (CPU); every caller runs the same lines on both. Pinning is
only ever asked of host tensors at allocation (`torch.empty(..., pin_memory=True)`), never of
a tensor that has already moved: a device tensor cannot be pinned.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

HOST = torch.device("cpu")


@dataclass(frozen=True)
class TransferPlan:
    device: torch.device  # where the model attends (the active tier, scoring)
    pin_host: bool  # host storage and staging are page-locked, so copies are DMA and may be asynchronous
    non_blocking: bool  # host->device uploads return at once; the device stream orders what reads them

    @classmethod
    def for_device(cls, device: str | torch.device) -> "TransferPlan":
        device = torch.device(device)
        accelerated = device.type == "cuda"
        return cls(device, pin_host=accelerated, non_blocking=accelerated)


def host_empty(shape, dtype: torch.dtype, plan: TransferPlan) -> torch.Tensor:
    """An uninitialised host tensor, page-locked when the plan says so."""
    return torch.empty(shape, dtype=dtype, device=HOST, pin_memory=plan.pin_host)


def to_host(t: torch.Tensor, plan: TransferPlan) -> torch.Tensor:
    """One copy of `t` (wherever it is) into new host storage, pinned where the plan says.

    Synchronous: the caller may read or free the result at once."""
    out = host_empty(t.shape, t.dtype, plan)
    out.copy_(t)
    return out


def host_cat(parts: list[torch.Tensor], dim: int, plan: TransferPlan) -> torch.Tensor:
    """torch.cat of host tensors into one new host tensor allocated by the plan."""
    shape = list(parts[0].shape)
    shape[dim] = sum(p.shape[dim] for p in parts)
    out = host_empty(shape, parts[0].dtype, plan)
    torch.cat(parts, dim=dim, out=out)
    return out


class Staging:
    """Rows gathered from host storage into one reused contiguous buffer (page-locked where the plan
    says), then moved to the device in one transfer. On CUDA the host waits for the previous upload
    before it writes the buffer again (an event), so a reuse never races a copy in flight."""

    ALIGN = 64  # bytes: every part starts where any dtype's view of it is aligned

    def __init__(self, plan: TransferPlan):
        self.plan = plan
        self._host: torch.Tensor | None = None
        self._event = None

    def gather(self, parts: list) -> list:
        """[(QuantizedRows storage (B, H, N, d), slots (B, H, k))] -> the selected rows of each as QuantizedRows on the device."""
        from idlekv.cache.quant import QuantizedRows

        tensors = [(t, idx) for rows, idx in parts for t in (rows.data, rows.scale) if t is not None]
        sizes = [_aligned(idx.numel() * t.shape[-1] * t.element_size()) for t, idx in tensors]
        host = self._buffer(sum(sizes))
        views, offset = [], 0
        for (t, idx), size in zip(tensors, sizes):
            view = _typed(host, offset, t.dtype, (*idx.shape, t.shape[-1]))
            _index_select_into(view, t, idx)
            views.append(view)
            offset += size
        if self.plan.pin_host:
            moved = host[:offset].to(self.plan.device, non_blocking=self.plan.non_blocking)
            self._event = torch.cuda.Event()
            self._event.record()
            views = [_typed(moved, int(v.storage_offset() * v.element_size()), v.dtype, v.shape) for v in views]
        out, views = [], iter(views)
        for rows, _ in parts:
            data = next(views)
            out.append(QuantizedRows(data, None if rows.scale is None else next(views)))
        return out

    def _buffer(self, nbytes: int) -> torch.Tensor:
        if self._event is not None:
            self._event.synchronize()  # the last upload from the buffer has finished reading it
        if self._host is None or self._host.numel() < nbytes:
            self._host = host_empty(max(nbytes, 1 << 20), torch.uint8, self.plan)
            self._host.zero_()  # touched now, so a promotion does not pay first-touch page faults
        return self._host


def _aligned(nbytes: int) -> int:
    return -(-nbytes // Staging.ALIGN) * Staging.ALIGN


def _typed(buffer: torch.Tensor, offset: int, dtype: torch.dtype, shape) -> torch.Tensor:
    """A view of `buffer`'s bytes from `offset` as a contiguous tensor of `dtype` and `shape`."""
    nbytes = dtype.itemsize
    for n in shape:
        nbytes *= n
    return buffer[offset : offset + nbytes].view(dtype).view(shape)


def _index_select_into(out: torch.Tensor, storage: torch.Tensor, idx: torch.Tensor) -> None:
    """out (B, H, k, d) = storage (B, H, N, d) rows idx (B, H, k): one index_select of whole rows (memcpy-like)."""
    if storage.dtype.itemsize == 1 and storage.dtype not in (torch.int8, torch.uint8):
        storage, out = storage.view(torch.uint8), out.view(torch.uint8)  # float8 has no index_select kernel
    b, h, n, d = storage.shape
    if d == 1:  # scales and positions: an element gather (index_select pays per row, whatever its size)
        torch.gather(storage[..., 0], 2, idx, out=out[..., 0])
        return
    flat = (idx + (torch.arange(b * h) * n).view(b, h, 1)).reshape(-1)
    torch.index_select(storage.reshape(b * h * n, d), 0, flat, out=out.view(-1, d))


class Uploader:
    """Host rows to the device through one reused staging buffer.

    On CUDA a host tensor that is not pinned and contiguous is first copied into a pinned
    staging buffer, then uploaded without blocking; before the buffer is written again the
    host waits for the previous upload (an event), so a reuse never races a copy in flight.
    On the CPU the rows are already where they are used and come back as they are."""

    def __init__(self, plan: TransferPlan):
        self.plan = plan
        self._staging: torch.Tensor | None = None
        self._event = None

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        if not self.plan.pin_host:
            return t.to(self.plan.device)
        if t.is_pinned() and t.is_contiguous():
            return t.to(self.plan.device, non_blocking=self.plan.non_blocking)
        if t.is_pinned() and t.dim() > 2 and t[(0,) * (t.dim() - 2)].is_contiguous():
            return self._blockwise(t)
        staged = self._stage(t)
        out = staged.to(self.plan.device, non_blocking=self.plan.non_blocking)
        self._event = torch.cuda.Event()
        self._event.record()
        return out

    def _blockwise(self, t: torch.Tensor) -> torch.Tensor:
        """A slice of pinned storage whose trailing (rows, dim) blocks are contiguous (a chunk of
        rows of every head): one direct DMA per block, no staging copy on the host."""
        out = torch.empty(t.shape, dtype=t.dtype, device=self.plan.device)
        for index in itertools.product(*(range(n) for n in t.shape[:-2])):
            out[index].copy_(t[index], non_blocking=self.plan.non_blocking)
        return out

    def _stage(self, t: torch.Tensor) -> torch.Tensor:
        nbytes = t.numel() * t.element_size()
        if self._event is not None:
            self._event.synchronize()  # the last upload from the buffer has finished reading it
        if self._staging is None or self._staging.numel() < nbytes:
            self._staging = host_empty(max(nbytes, 1 << 20), torch.uint8, self.plan)
        view = self._staging[:nbytes].view(t.dtype).view(t.shape)
        view.copy_(t)
        return view
