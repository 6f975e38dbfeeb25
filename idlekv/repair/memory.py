"""The repair engine's peak KV memory, predicted from its schedule before a run starts.

The engine (idlekv/engine.py) holds, on the model's device: the uncompressed root cache
(prompt + turn 1 + its answer, with room for the repaired turn, which Full resumes in place);
one compressed cache per base budget B whose conditions wait (with room for K and the turn);
one padded batch buffer at a time (at most `resume_batch_rows` rows including each slot's
room for the turn and its answer); and the one condition cache being built into it (a
repaired fork owns only its K promoted rows, a Refresh its B + K + tail rows). This module
replays that schedule on row counts, so the prediction and the engine cannot drift apart
without the memory check (`make memory-check`, docs/memory.md) showing it.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class KVShape:
    layers: int
    kv_heads: int
    head_dim: int
    dtype_bytes: int

    @property
    def row_bytes(self) -> int:
        """Keys + values of one token over every layer and KV head."""
        return 2 * self.layers * self.kv_heads * self.head_dim * self.dtype_bytes

    @classmethod
    def from_config(cls, config: dict, dtype: torch.dtype) -> "KVShape":
        heads = config["num_attention_heads"]
        head_dim = config.get("head_dim") or config["hidden_size"] // heads
        return cls(config["num_hidden_layers"], config.get("num_key_value_heads") or heads, head_dim, dtype.itemsize)


@dataclass(frozen=True)
class SampleRows:
    """Token counts of one sample as the engine sees them (upper bounds where answers vary)."""

    prompt: int  # prefilled context rows
    turn1: int  # turn-1 question tokens
    answer1: int  # turn-1 answer budget (new tokens)
    turn2: int  # the repaired turn's tokens
    answer2: int  # its answer budget

    @property
    def tail(self) -> int:
        return self.turn1 + self.answer1

    @property
    def headroom(self) -> int:
        return self.turn2 + self.answer2


@dataclass(frozen=True)
class PeakPlan:
    """Rows held on the device at the predicted peak, by what holds them."""

    root: int
    compressed: int  # every compressed cache alive then
    batch: int  # the padded batch buffer
    building: int  # the condition cache being copied into it
    row_bytes: int
    warm: int = 0  # rows in host memory then (the compressed caches' warm tiers), at the model's precision

    @property
    def rows(self) -> int:
        """Rows on the model's device."""
        return self.root + self.compressed + self.batch + self.building

    @property
    def kv_bytes(self) -> int:
        return self.rows * self.row_bytes

    @property
    def warm_bytes(self) -> int:
        return self.warm * self.row_bytes


def predict_peak(shape: KVShape, sample: SampleRows, budgets: Sequence[int], ks: Sequence[int],
                 kinds: Sequence[str], resume_batch_rows: int) -> PeakPlan:
    """Replay the engine's schedule for one sample; the plan at its largest moment.

    `kinds`: each condition's kind (full | repair | refresh), in config order."""
    root = sample.prompt + sample.tail + sample.headroom
    waiting_kinds = [k for k in kinds if k != "full"]
    best, alive, warm, pending = PeakPlan(root, 0, 0, 0, shape.row_bytes), [], [], []
    for b in budgets:
        alive.append(b + sample.tail + max(max(ks), sample.turn2))
        warm.append(sample.prompt - b)
        pending += [(b + k + sample.tail, k, kind) for k in ks for kind in waiting_kinds]
        best = _larger(best, PeakPlan(root, sum(alive), 0, 0, shape.row_bytes, sum(warm)))
        if sum(rows + sample.headroom for rows, _, _ in pending) >= resume_batch_rows:
            best = _larger(best, _resume_peak(PeakPlan(root, sum(alive), 0, 0, shape.row_bytes, sum(warm)), pending,
                                              sample.headroom, resume_batch_rows))
            alive, warm, pending = [], [], []
    if pending:
        best = _larger(best, _resume_peak(PeakPlan(root, sum(alive), 0, 0, shape.row_bytes, sum(warm)), pending,
                                          sample.headroom, resume_batch_rows))
    return best


def _resume_peak(held: PeakPlan, pending: list, headroom: int, max_rows: int) -> PeakPlan:
    best = held
    for batch in _batches(pending, max_rows, headroom):
        buffer = len(batch) * (max(rows for rows, _, _ in batch) + headroom)
        building = max(rows if kind == "refresh" else k for rows, k, kind in batch)
        best = _larger(best, PeakPlan(held.root, held.compressed, buffer, building, held.row_bytes, held.warm))
    return best


def _batches(pending: list, max_rows: int, headroom: int) -> list[list]:
    """The engine's grouping (idlekv.repair.batching.batches) on (rows, k, kind) triples."""
    batches, current = [], []
    for item in sorted(pending, key=lambda p: p[0]):
        if current and (item[0] + headroom) * (len(current) + 1) > max_rows:
            batches.append(current)
            current = []
        current.append(item)
    return batches + ([current] if current else [])


def _larger(a: PeakPlan, b: PeakPlan) -> PeakPlan:
    return b if b.rows > a.rows else a


def weights_bytes(model_dir: str | Path, dtype: torch.dtype) -> int:
    """Parameter bytes of a model folder's safetensors at `dtype`, read from the files' headers."""
    total = 0
    for file in Path(model_dir).glob("*.safetensors"):
        with open(file, "rb") as f:
            header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
        for name, entry in header.items():
            if name != "__metadata__":
                count = 1
                for size in entry["shape"]:
                    count *= size
                total += count * dtype.itemsize
    return total


def device_memory_bytes(device: str | torch.device) -> int:
    """Total memory of the device a run will use (system memory for the CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


class DoesNotFit(RuntimeError):
    """A run whose predicted peak does not fit the device, with what to change."""


def check_fits(plan: PeakPlan, weights: int, device: str | torch.device, what: str) -> str:
    """A one-line prediction; raises when weights + the KV peak exceed the device's memory."""
    total, available = weights + plan.kv_bytes, device_memory_bytes(device)
    gib = 1 << 30
    line = (f"{what}: predicted peak device memory {total / gib:.1f} GiB = weights {weights / gib:.1f} + KV {plan.kv_bytes / gib:.1f} "
            f"(root {plan.root} rows, compressed {plan.compressed}, batch buffer {plan.batch}, building {plan.building}; "
            f"{plan.row_bytes:,} B per row) of {available / gib:.1f} GiB on {device}")
    if total > available:
        raise DoesNotFit(line + ". It does not fit: lower repair.resume_batch_rows (the batch buffer), or run fewer "
                           "budgets per job (phase.budgets), or a shorter phase.length.")
    return line
