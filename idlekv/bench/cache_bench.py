"""Promotion throughput of the tiered cache against the machine's plain memory copy.

Builds Qwen2.5-7B-shaped tiers (28 layers, 4 KV heads, head_dim 128, bf16) from random
post-RoPE-like keys, then times `promote` of K rows chosen at random from the warm tier:
host gather (+ pinned staging and host->device copy on CUDA) + dequantize + write into the
reserved active capacity. Baselines in the same run: a contiguous memcpy of the same
number of bytes (fresh buffers of that size, not cache-resident above a few MB), the bare
gather of the same stored rows into a reused buffer (what any promotion reads: the floor of
this machine's row gather), and (on CUDA) pinned and pageable host->device bandwidth.
Selections: `random` rows (the worst case for a gather) or `bursts` of 7 consecutive warm
rows (the shape of IdleKV's [a-1, a+5] selection).
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from idlekv.bench.timing import median_seconds
from idlekv.cache import TieredCache


def build_cache(layers: int, kv_heads: int, head_dim: int, active: int, warm: int, reserve: int, precision: str, device: str, dtype: torch.dtype) -> TieredCache:
    total = active + warm
    gen = torch.Generator().manual_seed(0)
    keys = [torch.randn(1, kv_heads, total, head_dim, generator=gen, dtype=torch.float32).to(device, dtype) for _ in range(layers)]
    values = [torch.randn(1, kv_heads, total, head_dim, generator=gen, dtype=torch.float32).to(device, dtype) for _ in range(layers)]
    cache = TieredCache.from_tensors(keys, values, warm_precision=precision)
    del keys, values
    keep = torch.stack([torch.randperm(total, generator=gen)[:active] for _ in range(kv_heads)])
    cache.compress(keep, reserve=reserve)
    return cache


def memcpy_gbps(nbytes: int, device: str, reps: int) -> float:
    src = torch.empty(nbytes, dtype=torch.uint8, device=device).fill_(1)
    dst = torch.empty_like(src)
    return nbytes / median_seconds(lambda: dst.copy_(src), reps, device) / 1e9


def h2d_gbps(nbytes: int, pinned: bool, reps: int) -> float:
    src = torch.empty(nbytes, dtype=torch.uint8, pin_memory=pinned).fill_(1)
    dst = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    return nbytes / median_seconds(lambda: dst.copy_(src, non_blocking=pinned), reps, "cuda") / 1e9


def gather_floor_gbps(cache: TieredCache, slots: torch.Tensor, reps: int) -> float:
    """The stored rows of `slots` in every layer (keys and values) gathered into one reused buffer, as bf16 bytes per second."""
    from idlekv.cache.transfer import Staging

    staging, warm = Staging(cache.warm.plan), cache.warm
    gather = lambda: [staging.gather([(warm._k[i], slots[None]), (warm._v[i], slots[None])]) for i in range(warm.num_layers)]  # noqa: E731
    row_bytes = 2 * warm.num_layers * slots.shape[0] * cache.active.head_dim * cache.active.dtype.itemsize
    return slots.shape[-1] * row_bytes / median_seconds(gather, reps, "cpu") / 1e9


def pick_slots(candidates: int, k: int, heads: int, selection: str, seed: int) -> torch.Tensor:
    """(heads, k) distinct warm slots: random rows, or bursts of 7 consecutive rows at random places."""
    gen = torch.Generator().manual_seed(seed)
    if selection == "random":
        return torch.stack([torch.randperm(candidates, generator=gen)[:k] for _ in range(heads)])
    width = 7
    starts = [torch.randperm(candidates // width, generator=gen)[: -(-k // width)] * width for _ in range(heads)]
    return torch.stack([(s[:, None] + torch.arange(width)).flatten()[:k] for s in starts])


def run(args) -> list[dict]:
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16
    row_bytes = 2 * args.layers * args.kv_heads * args.head_dim * dtype.itemsize  # one token, all layers, K and V
    results = []
    print(f"device={device}  shape: {args.layers} layers x {args.kv_heads} KV heads x head_dim {args.head_dim}, bf16; "
          f"{row_bytes:,} B per token; active {args.active_rows} rows, warm {args.warm_rows} rows", flush=True)
    for precision in args.precision:
        root = build_cache(args.layers, args.kv_heads, args.head_dim, args.active_rows, args.warm_rows, max(args.k), precision, device, dtype)
        slots_all, _ = root.warm.candidates(0)
        for k, selection in ((k, sel) for k in args.k for sel in args.selection):
            slots = torch.gather(slots_all[0], -1, pick_slots(slots_all.shape[-1], k, args.kv_heads, selection, k))

            def setup():
                twin = root.fork()
                twin.active.own()  # pay the copy-on-write copy outside the timed region
                return twin

            seconds = median_seconds(lambda twin: twin.promote(slots), args.reps, device, setup=setup)
            moved = k * row_bytes
            baseline = memcpy_gbps(moved, device, args.reps)
            floor = gather_floor_gbps(root, slots, args.reps)
            row = {
                "device": device, "precision": precision, "k": k, "selection": selection, "promoted_bytes": moved,
                "promote_ms": seconds * 1e3, "promote_gbps": moved / seconds / 1e9,
                "memcpy_gbps": baseline, "ratio_vs_memcpy": moved / seconds / 1e9 / baseline,
                "gather_gbps": floor, "gather_ratio_vs_memcpy": floor / baseline,
            }
            if device == "cuda":
                row["h2d_pinned_gbps"] = h2d_gbps(moved, True, args.reps)
                row["h2d_pageable_gbps"] = h2d_gbps(moved, False, args.reps)
                row["ratio_vs_h2d_pinned"] = row["promote_gbps"] / row["h2d_pinned_gbps"]
            results.append(row)
            extra = f"  h2d pinned {row['h2d_pinned_gbps']:.1f} GB/s (ratio {row['ratio_vs_h2d_pinned']:.2f})" if device == "cuda" else ""
            print(f"{precision:>5} K={k:>5} {selection:>6}: promote {row['promote_ms']:8.2f} ms = {row['promote_gbps']:6.2f} GB/s | "
                  f"memcpy {baseline:6.2f} GB/s | ratio {row['ratio_vs_memcpy']:.2f} | bare gather of the stored rows "
                  f"{row['gather_ratio_vs_memcpy']:.2f} of memcpy{extra}", flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=28)
    parser.add_argument("--kv-heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--active-rows", type=int, default=4096)
    parser.add_argument("--warm-rows", type=int, default=8192)
    parser.add_argument("--k", type=int, nargs="+", default=[96, 1024, 4096])
    parser.add_argument("--precision", nargs="+", default=["model", "fp8", "int8"])
    parser.add_argument("--selection", nargs="+", choices=["random", "bursts"], default=["random", "bursts"])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", help="write the rows as JSON here")
    args = parser.parse_args(argv)
    if max(args.k) > args.warm_rows:
        parser.error(f"--k {max(args.k)} exceeds --warm-rows {args.warm_rows}")
    results = run(args)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
