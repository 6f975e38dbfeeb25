"""Peak bytes of the tensors a block of code creates on a device, measured on any device.

A dispatch mode sees every tensor an operator returns; each new storage is counted until its
last reference dies (a weak reference on the storage). Tensors that existed before the block
(a model's weights) are not counted. On CUDA the allocator's own peak is read beside it.
"""

from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class LiveBytes(TorchDispatchMode):
    def __init__(self, device: str | torch.device):
        super().__init__()
        self.device_type = torch.device(device).type
        self._live: dict[int, int] = {}
        self.current = self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.device.type == self.device_type:
                self._track(t.untyped_storage())
        return out

    def _track(self, storage) -> None:
        key = storage.data_ptr()
        if not key or key in self._live:
            return
        self._live[key] = storage.nbytes()
        self.current += storage.nbytes()
        self.peak = max(self.peak, self.current)
        weakref.finalize(storage, self._free, key)

    def _free(self, key: int) -> None:
        self.current -= self._live.pop(key, 0)
