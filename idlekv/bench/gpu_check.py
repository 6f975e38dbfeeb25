"""make gpu-check: one run that proves the CUDA side (no network, no real weights), in minutes.

1. versions and device;
2. every condition of the engine on the embedded model (fp32, TF32 off) on the CPU and on
   the GPU: answers, kept rows and needle coverage compared cell by cell, for the two-turn
   grid and for phase04's five-turn session (both variants); exact-score differences with
   TF32 off and on;
3. pinned host->device and device->host copy rates against the device's own copy rate;
4. promote ms at K = 96 / 1024 / 5000 on Qwen2.5-7B-shaped tiers (bf16, fp8, int8), against
   the floor of moving the same bytes over a pinned copy;
5. exact scoring ms at 32K and 1M warm candidates (Qwen-shaped, bf16);
6. the engine's cost per cell against the reference protocol (make bench-repair (a));
7. peak KV memory at 32K for the Qwen2.5-7B and Llama-3.1-8B KV shapes (make memory-check);
8. phase07's runtime envelope (make runtime) on this device: score / select / promote vs warm
   candidates up to 4M where host memory allows, the digest's trade-off at 1M, and the repair of a
   32K sample against re-prefilling it (written beside the report as <out>_runtime.csv).

`--quick` shrinks every part so the same code runs on the CPU in the test suite.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import traceback
from importlib import metadata
from pathlib import Path

import torch

from idlekv.bench import memory_check, repair_bench
from idlekv.bench.cache_bench import build_cache
from idlekv.bench.timing import median_seconds, synchronize
from idlekv.cache import TieredCache
from idlekv.engine import EngineConfig, RepairEngine
from idlekv.repair.conditions import STANDARD_CONDITIONS, Condition
from idlekv.repair.scoring import score_rows
from idlekv.retention import build_rule

ROOT = Path(__file__).resolve().parents[2]
LAYERS, QUERY_HEADS, KV_HEADS, HEAD_DIM = repair_bench.LAYERS, repair_bench.QUERY_HEADS, repair_bench.KV_HEADS, repair_bench.HEAD_DIM
QWEN_ROW_BYTES = 2 * LAYERS * KV_HEADS * HEAD_DIM * 2


def versions(device: str) -> dict:
    out = {"python": platform.python_version(), "torch": torch.__version__, "device": device}
    for name in ("transformers", "tokenizers", "safetensors"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    if device == "cuda":
        out |= {"gpu": torch.cuda.get_device_name(0), "cuda": torch.version.cuda,
                "gpu_memory_gib": torch.cuda.get_device_properties(0).total_memory / (1 << 30)}
    return out


def engine_rows(device: str, samples: int, length: int) -> list[dict]:
    from idlekv.models import load_model
    from ruler import generate

    lm = load_model(ROOT / "models/embedded", device=device)
    scaled = {"topk_burst": {"lo": -1, "hi": 5}, "coverage": {"width": 7}}  # the embedded model's needles (phase03_repair_4q)
    conditions = [Condition.from_config({"name": c.name, "kind": c.kind, "signal": c.signal, "selector": c.selector,
                                         "granularity": c.granularity, "deployable": c.deployable}, scaled)
                  for c in STANDARD_CONDITIONS]
    conditions.append(Condition("IdleKV+kept-anchors", "repair", "exact", "topk_burst", (("hi", 5), ("lo", -1)), anchors="all"))
    engine = RepairEngine(lm.model, lm.tokenizer, build_rule("snapkv_reference", sinks=4, recent=16),
                          EngineConfig(budgets=[96, 160], ks=[8, 24], conditions=conditions, max_new_tokens=32))
    rows = []
    for i in range(samples):
        sample = generate("mq_niah_4q_embedded", length, i, lm.tokenizer, base_seed=5, split="clean", recency_window=64)
        rows += engine.run_sample(sample)
    return rows


def session_rows(device: str, samples: int) -> list[dict]:
    """phase04's five-turn session (both variants) on the embedded model."""
    from idlekv.models import load_model
    from idlekv.session import SessionConfig, SessionEngine
    from ruler import generate

    lm = load_model(ROOT / "models/embedded", device=device)
    burst = (("hi", 5), ("lo", -1))
    conditions = [Condition("Full", "full"), Condition("Matched", "repair", "rule", "topk", granularity="head"),
                  Condition("IdleKV", "repair", "exact", "topk_burst", burst), Condition("Random-K", "repair", None, "random"),
                  Condition("Oldest-K", "repair", None, "oldest")]
    rule = build_rule("snapkv_reference", sinks=4, recent=16)
    rows = []
    for cumulative in (True, False):
        session = SessionEngine(lm.model, lm.tokenizer, rule, SessionConfig(96, 24, conditions, cumulative=cumulative))
        for i in range(samples):
            sample = generate("mq_niah_4q_embedded", 1024, i, lm.tokenizer, base_seed=5, num_keys=8, num_queries=8,
                              split="schedule", schedule=[[0, 1], [2, 3], [4, 5], [6, 7], [0, 5]], recency_window=64)
            rows += [{**r, "variant": cumulative} for r in session.run_sample(sample)]
    return rows


def part_equality(device: str, args) -> dict:
    """Every condition on the CPU and on `device`, fp32 with TF32 off; then the exact scores with TF32 on."""
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    fields = ("answer", "accuracy", "active_rows", "needle_rows_active")
    cpu, dev = engine_rows("cpu", args.samples, args.length), engine_rows(device, args.samples, args.length)
    key = lambda r: (r["index"], r["condition"], r["B"], r["K"])  # noqa: E731
    dev_by = {key(r): r for r in dev}
    differ = [(key(r), f) for r in cpu for f in fields if r[f] != dev_by[key(r)][f]]
    conditions = sorted({r["condition"] for r in cpu})
    out = {"cells": len(cpu), "conditions": conditions, "cells_differing": len({k for k, _ in differ}),
           "differences": [f"{k}: {f}" for k, f in differ[:20]],
           "accuracy_cpu": sum(r["accuracy"] for r in cpu) / len(cpu), "accuracy_device": sum(r["accuracy"] for r in dev) / len(dev)}
    turn_key = lambda r: (r["index"], r["variant"], r["condition"], r["turn"])  # noqa: E731
    cpu_turns = session_rows("cpu", args.samples)
    dev_turns = {turn_key(r): r for r in session_rows(device, args.samples)}
    turn_differ = [turn_key(r) for r in cpu_turns if any(r[f] != dev_turns[turn_key(r)][f] for f in fields)]
    out |= {"session_turns": len(cpu_turns), "session_turns_differing": len(turn_differ),
            "session_differences": [str(k) for k in turn_differ[:20]]}
    gen = torch.Generator().manual_seed(3)
    keys = [torch.randn(1, 2, 1500, 64, generator=gen) for _ in range(4)]
    queries = [torch.randn(8, 24, 64, generator=gen) for _ in range(4)]
    cpu_cache = TieredCache.from_tensors(keys, [k.clone() for k in keys])
    cpu_cache.compress(torch.arange(0, 1500, 5), reserve=8)
    reference = score_rows(cpu_cache, queries)
    for tf32 in (False, True):
        torch.backends.cuda.matmul.allow_tf32 = tf32
        cache = TieredCache.from_tensors([k.to(device) for k in keys], [k.to(device) for k in keys])
        cache.compress(torch.arange(0, 1500, 5), reserve=8)
        scores = score_rows(cache, [q.to(device) for q in queries])
        diff = max(float((a.cpu() - b).abs().max() / b.abs().max()) for a, b in zip(scores.warm, reference.warm))
        out[f"score_max_rel_diff_tf32_{'on' if tf32 else 'off'}"] = diff
    torch.backends.cuda.matmul.allow_tf32 = False
    print(f"(2) the five-turn session: {out['session_turns']} (sample, variant, condition, turn) rows, CPU vs {device}: "
          f"{out['session_turns_differing']} differ", flush=True)
    print(f"(2) {out['cells']} cells x {len(conditions)} conditions, CPU vs {device}: {out['cells_differing']} cells differ "
          f"(accuracy {out['accuracy_cpu']:.3f} vs {out['accuracy_device']:.3f}); exact scores max relative difference "
          f"{out['score_max_rel_diff_tf32_off']:.2e} (TF32 off), {out['score_max_rel_diff_tf32_on']:.2e} (TF32 on)", flush=True)
    return out


def copy_rates(device: str, nbytes: int, reps: int) -> dict:
    """GB/s of device->device, pinned host->device and device->host copies of `nbytes`."""
    pin = device == "cuda"
    host = torch.empty(nbytes, dtype=torch.uint8, pin_memory=pin).fill_(1)
    dev = torch.empty(nbytes, dtype=torch.uint8, device=device).fill_(2)
    dev2 = torch.empty_like(dev)
    rate = lambda fn: nbytes / median_seconds(fn, reps, device) / 1e9  # noqa: E731
    out = {"bytes": nbytes, "device_copy_gbps": rate(lambda: dev2.copy_(dev)),
           "h2d_pinned_gbps": rate(lambda: dev.copy_(host, non_blocking=pin)),
           "d2h_pinned_gbps": rate(lambda: host.copy_(dev, non_blocking=pin))}
    print(f"(3) copies of {nbytes / 1e6:.0f} MB on {device}: device {out['device_copy_gbps']:.0f} GB/s | host->device "
          f"{out['h2d_pinned_gbps']:.1f} GB/s | device->host {out['d2h_pinned_gbps']:.1f} GB/s (pinned={pin})", flush=True)
    return out


def promote_rates(device: str, args, h2d_gbps: float) -> list[dict]:
    rows = []
    for precision in ("model", "fp8", "int8"):
        root = build_cache(LAYERS, KV_HEADS, HEAD_DIM, args.active, args.warm, max(args.ks), precision, device, torch.bfloat16)
        slots_all, _ = root.warm.candidates(0)
        stored_row = sum(root.warm._row_bytes(i) for i in range(LAYERS)) * KV_HEADS
        for k in args.ks:
            gen = torch.Generator().manual_seed(k)
            slots = torch.gather(slots_all[0], -1, torch.stack([torch.randperm(slots_all.shape[-1], generator=gen)[:k] for _ in range(KV_HEADS)]))

            def setup():
                twin = root.fork()
                twin.active.own()
                return twin

            seconds = median_seconds(lambda twin: twin.promote(slots), args.reps, device, setup=setup)
            floor = k * stored_row / (h2d_gbps * 1e9)
            rows.append({"precision": precision, "k": k, "promote_ms": seconds * 1e3, "floor_ms": floor * 1e3,
                         "ratio_of_floor": floor / seconds})
            print(f"(4) promote {precision:>5} K={k:>5}: {seconds * 1e3:8.2f} ms | pinned-copy floor {floor * 1e3:7.3f} ms "
                  f"| {floor / seconds:.2f} of the floor", flush=True)
        root = None  # free this precision's tiers before the next
    return rows


def scoring_times(device: str, args) -> list[dict]:
    from idlekv.repair.memory import device_memory_bytes

    rows = []
    for candidates in args.candidates:
        needed = 3 * candidates * QWEN_ROW_BYTES // 2  # the keys, then the evicted keys and values gathered beside them
        if needed > device_memory_bytes(device):
            print(f"(5) {candidates:,} candidates skipped: they need about {needed / 1e9:.0f} GB on {device}", flush=True)
            rows.append({"candidates": candidates, "skipped": f"needs about {needed / 1e9:.0f} GB"})
            continue
        gen = torch.Generator(device=device).manual_seed(0)
        total = candidates + args.active
        keys = [torch.randn(1, KV_HEADS, total, HEAD_DIM, generator=gen, device=device, dtype=torch.bfloat16) for _ in range(LAYERS)]
        cache = TieredCache.from_tensors(keys, keys)
        del keys
        cache.compress(torch.arange(candidates, total).expand(KV_HEADS, -1), reserve=8)
        queries = [torch.randn(QUERY_HEADS, args.queries, HEAD_DIM, generator=gen, device=device, dtype=torch.bfloat16) for _ in range(LAYERS)]
        seconds = median_seconds(lambda: score_rows(cache, queries), args.reps, device)
        keys_bytes = candidates * LAYERS * KV_HEADS * HEAD_DIM * 2
        rows.append({"candidates": candidates, "score_ms": seconds * 1e3, "warm_key_bytes": keys_bytes})
        print(f"(5) exact scoring of {candidates:,} warm candidates ({keys_bytes / 1e9:.2f} GB of keys on the host): "
              f"{seconds * 1e3:.1f} ms", flush=True)
        cache = None  # free the tiers (1M candidates: 57 GB of host memory) before the next
        synchronize(device)
    return rows


def runtime_envelope(device: str, args, out: Path) -> list[dict]:
    """phase07's measurements, on this device, without its run folder: the ratios it publishes, printed and returned."""
    import pandas as pd

    from idlekv.config import compose
    from idlekv.models import load_model
    from phases.phase07_runtime import embedded, tiers
    from phases.phase07_runtime.report import ratios, summarize
    from phases.phase07_runtime.run import repair_engine

    cfg = compose(["experiment=phase07_runtime", f"device={device}", f"phase.candidates=[{','.join(map(str, args.runtime_candidates))}]",
                   *args.runtime_overrides])
    phase, rows, never = cfg.phase, [], lambda row: False
    rows += tiers.floor_rows(phase, device, never)
    for candidates in phase.candidates:
        rows += tiers.latency_rows(phase, candidates, device, never)
    for keys_model in phase.recall.keys_models:
        rows += tiers.digest_tradeoff_rows(phase, keys_model, device, never)
    lm = load_model(ROOT / cfg.model.path, device=device)
    engine = repair_engine(cfg, lm)
    rows += embedded.recall_rows(phase, engine, never)
    rows += embedded.reprefill_rows(phase, engine, device, never)
    frame = pd.DataFrame(rows)
    frame.to_csv(out.with_name(f"{out.stem}_runtime.csv"), index=False)
    table = ratios(frame, summarize(frame))
    print("(8) " + table.to_string(index=False).replace("\n", "\n    "), flush=True)
    return table.to_dict("records")


def host_memory_bytes() -> int:
    import os

    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes: the same code on the CPU in seconds (the test suite runs it)")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default="runs/gpu_check.json")
    p.add_argument("--strict", action="store_true", help="exit 1 when a part failed (the test suite's quick run)")
    p.add_argument("--skip", nargs="*", default=[], choices=["equality", "copies", "promote", "scoring", "engine", "memory", "runtime"])
    return p


def sizes(args) -> None:
    quick = args.quick
    args.samples, args.length = (1, 640) if quick else (3, 1024)
    args.active, args.warm, args.ks = (256, 1024, [96, 512]) if quick else (4096, 8192, [96, 1024, 5000])
    args.candidates = [2048] if quick else [32768, 1 << 20]
    args.queries, args.reps = 64, (1 if quick else 5)
    args.copy_bytes = (16 << 20) if quick else (1 << 30)
    # the envelope's sizes: 4M candidates hold 8 GB of aliased storage on the host (idlekv/bench/synthetic_tiers.py)
    args.runtime_candidates = [2048, 4096] if quick else [32768, 131072, 524288, 1 << 20] + ([1 << 22] if host_memory_bytes() > (64 << 30) else [])
    args.runtime_overrides = ["phase.ks=[8,16]", "phase.reps=1", "phase.recall.candidates=4096", "phase.recall.k=64",
                              "phase.recall.page_rows=[16]", "phase.recall.kept_fractions=[0.125]", "phase.embedded.num_samples=1",
                              "phase.embedded.page_rows=[16]", "phase.embedded.kept_fractions=[0.125]", "phase.reprefill.length=1024",
                              "phase.reprefill.budget=128", "phase.reprefill.reps=1", "phase.floor_bytes=1048576"] if quick else []


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    sizes(args)
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    start, report = time.perf_counter(), {"versions": versions(device), "quick": args.quick}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def save(part: str, measure) -> None:
        """Run one part; a failure is recorded and the next part still runs. The report is
        written after every part, so a run cut short keeps what it measured."""
        try:
            report[part] = measure()
        except Exception as err:  # noqa: BLE001 - a check reports every failure it meets
            report.setdefault("failures", {})[part] = f"{type(err).__name__}: {err}\n{traceback.format_exc(limit=6)}"
            print(f"({part}) FAILED: {type(err).__name__}: {err}", flush=True)
        report["seconds"] = time.perf_counter() - start
        out.write_text(json.dumps(report, indent=2, default=str))

    print(f"gpu-check on {device}: {json.dumps(report['versions'])}", flush=True)
    with torch.no_grad():
        if "equality" not in args.skip:
            save("equality", lambda: part_equality(device, args))
        save("copies", lambda: copy_rates(device, args.copy_bytes, args.reps))
        if "promote" not in args.skip:
            save("promote", lambda: promote_rates(device, args, report["copies"]["h2d_pinned_gbps"]))
        if "scoring" not in args.skip:
            save("scoring", lambda: scoring_times(device, args))
        if "engine" not in args.skip:
            bench = repair_bench.main_parser().parse_args(["--samples", "1" if args.quick else "3", "--length",
                                                          "640" if args.quick else "2048"])
            save("engine", lambda: repair_bench.part_a(bench, device))
        if "memory" not in args.skip:
            # a GPU holds the families' real layer counts: no extrapolation there
            layers = ["1", "2"] if args.quick or device == "cpu" else ["0"]
            mem = memory_check.parser().parse_args(["--layers", *layers, "--device", device] + (
                ["--context", "1024", "--budgets", "512", "--ks", "8", "16"] if args.quick else []))
            save("memory", lambda: memory_check.run(mem))
        if "runtime" not in args.skip:
            save("runtime", lambda: runtime_envelope(device, args, out))
    if report.get("failures") and args.strict:
        print(f"gpu-check: {len(report['failures'])} part(s) failed: {sorted(report['failures'])}")
        return 1
    print(f"gpu-check done in {report['seconds']:.0f} s; wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
