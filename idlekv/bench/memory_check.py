"""make memory-check: the repair engine's peak KV memory at the reference's scale, measured against its prediction.

For each real family (Qwen2.5-7B, Llama-3.1-8B), a random model whose KV cache has exactly
the family's shape per layer (KV heads, head_dim, bf16; its real tokenizer and chat
template) runs one 4Q sample of phase03's standard conditions at 32K context, B=16384,
K in {48, 96, 128}, at `--layers` layer counts. The peak of every tensor the engine creates
on the device is measured (LiveBytes; on CUDA also the allocator's peak), fitted as
a + b * layers, and extrapolated to the family's 28 / 32 layers; the prediction
(`idlekv.repair.memory`) is printed beside each. On the CPU the query heads are cut to the KV
heads and the hidden size to 256 to keep a 32K prefill in minutes: neither changes the KV cache.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from idlekv.bench.live_bytes import LiveBytes
from idlekv.engine import EngineConfig, RepairEngine
from idlekv.families import REAL_FAMILIES, random_model
from idlekv.repair.conditions import STANDARD_CONDITIONS
from idlekv.repair.memory import KVShape
from idlekv.retention import build_rule
from ruler import generate

GIB = 1 << 30
DEFAULT_RESUME_BATCH_ROWS = 65536  # configs/repair/idlekv.yaml


def measure(family, layers: int, args, device: str) -> dict:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(family.tokenizer_folder())
    published = family.config()
    overrides = {"head_dim": KVShape.from_config(published, torch.bfloat16).head_dim}
    if device == "cpu" or args.small:
        overrides |= {"hidden_size": 256, "intermediate_size": 512, "num_attention_heads": published["num_key_value_heads"]}
    model = random_model(family, layers, torch.bfloat16, device, **overrides)
    sample = generate(args.task, args.context, 0, tokenizer, base_seed=args.seed, split="clean", recency_window=128)
    engine = RepairEngine(model, tokenizer, build_rule("snapkv_reference", sinks=4, recent=128),
                          EngineConfig(budgets=args.budgets, ks=args.ks, conditions=STANDARD_CONDITIONS,
                                       max_new_tokens=args.max_new_tokens, resume_batch_rows=args.resume_batch_rows))
    shape = KVShape.from_config(model.config.to_dict(), torch.bfloat16)
    plan = engine.predicted_peak(sample, shape)
    rows = engine.rows_of(sample).sample_rows(1)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    start, phases = time.perf_counter(), {}
    with LiveBytes(device) as meter:
        turn_one = engine.turn_one

        def split_after_turn_one(s):  # the prefill's activations peak before any repair holds a row
            first = turn_one(s)
            phases["prefill_peak_bytes"], meter.peak = meter.peak, meter.current
            if device == "cuda":
                phases["cuda_prefill_peak_bytes"] = torch.cuda.max_memory_allocated() - base
                torch.cuda.reset_peak_memory_stats()
            return first

        engine.turn_one = split_after_turn_one
        result = engine.run_sample(sample)
    # On the CPU the warm tier's host memory is the same memory the meter sees.
    predicted = plan.kv_bytes + (plan.warm_bytes if device == "cpu" else 0)
    out = {"family": family.name, "layers": layers, "device": device, "prompt_rows": rows.prompt, "cells": len(result),
           "seconds": time.perf_counter() - start, "repair_peak_bytes": meter.peak,
           "measured_peak_bytes": max(meter.peak, phases["prefill_peak_bytes"]), "predicted_bytes": predicted, **phases,
           "predicted_plan": {"root": plan.root, "compressed": plan.compressed, "batch": plan.batch, "building": plan.building,
                              "warm_host": plan.warm}}
    if device == "cuda":
        out["cuda_repair_peak_bytes"] = torch.cuda.max_memory_allocated() - base
        out["cuda_peak_bytes"] = max(out["cuda_repair_peak_bytes"], phases["cuda_prefill_peak_bytes"])
    print(f"  {family.name} at {layers} layer(s): measured peak {out['measured_peak_bytes'] / GIB:.3f} GiB (prefill and turn 1 "
          f"{phases['prefill_peak_bytes'] / GIB:.3f}, repair {meter.peak / GIB:.3f}) | predicted {predicted / GIB:.3f} GiB "
          f"(device KV {plan.kv_bytes / GIB:.3f} + warm tier {plan.warm_bytes / GIB:.3f} on the host)"
          + (f" | CUDA allocator peak: prefill {phases['cuda_prefill_peak_bytes'] / GIB:.3f}, repair "
             f"{out['cuda_repair_peak_bytes'] / GIB:.3f} GiB" if device == "cuda" else "")
          + f" | {out['seconds']:.0f} s", flush=True)
    return out


def extrapolate(points: list[dict], layers: int, key: str) -> float:
    """a + b * layers through the measured points (least squares)."""
    xs, ys = [p["layers"] for p in points], [p[key] for p in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return my + slope * (layers - mx)


def run(args) -> dict:
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    print(f"memory check on {device}: {args.task} at {args.context} tokens, B={args.budgets}, K={args.ks}, "
          f"standard conditions, resume_batch_rows={args.resume_batch_rows}", flush=True)
    report = {"device": device, "context": args.context, "budgets": args.budgets, "ks": args.ks, "families": {}}
    for name in args.families:
        family = REAL_FAMILIES[name]
        full = family.config()["num_hidden_layers"]
        points = [measure(family, layers or full, args, device) for layers in args.layers]
        shape = KVShape.from_config(family.config(), torch.bfloat16)
        plan = points[-1]["predicted_plan"]
        device_rows = plan["root"] + plan["compressed"] + plan["batch"] + plan["building"]
        predicted_kv = device_rows * shape.row_bytes
        predicted = predicted_kv + (plan["warm_host"] * shape.row_bytes if device == "cpu" else 0)
        measured = extrapolate(points, full, "measured_peak_bytes") if len(points) > 1 else (
            points[0]["measured_peak_bytes"] if points[0]["layers"] == full else None)
        summary = {"points": points, "layers": full, "predicted_device_kv_bytes": predicted_kv,
                   "predicted_warm_host_bytes": plan["warm_host"] * shape.row_bytes, "predicted_bytes": predicted,
                   "extrapolated_peak_bytes": measured, "prediction_error": None if measured is None else predicted / measured - 1}
        report["families"][name] = summary
        if measured is not None:
            how = "measured" if points[-1]["layers"] == full else "measured (extrapolated)"
            print(f"{name} at {full} layers: {how} {measured / GIB:.2f} GiB | predicted {predicted / GIB:.2f} GiB "
                  f"(device KV {predicted_kv / GIB:.2f}) | prediction {summary['prediction_error']:+.1%}", flush=True)
    return report


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--families", nargs="+", default=list(REAL_FAMILIES), choices=list(REAL_FAMILIES))
    p.add_argument("--layers", type=int, nargs="+", default=[1, 2], help="layer counts to measure; 0 = the family's own")
    p.add_argument("--context", type=int, default=32768)
    p.add_argument("--task", default="mq_niah_4q")
    p.add_argument("--budgets", type=int, nargs="+", default=[16384])
    p.add_argument("--ks", type=int, nargs="+", default=[48, 96, 128])
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--resume-batch-rows", type=int, default=DEFAULT_RESUME_BATCH_ROWS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--small", action="store_true", help="the CPU's reduced hidden size and query heads on CUDA too")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", help="write the report as JSON here")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    with torch.no_grad():
        report = run(args)
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
