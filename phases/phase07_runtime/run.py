"""phase07: the runtime envelope of a repair (make runtime).

On Qwen2.5-7B-shaped tiers (28 layers, 4 KV heads, head_dim 128, bf16; synthetic keys): score, select
and promote latency (p50, p95 over repetitions) vs warm candidates for the exact, digest and proxy
signals and K in phase.ks, with the copy floors measured in the same run; the digest's recall of each
head's exact top-K rows vs page size and share of pages read, with its scoring time against the exact
signal's. On the embedded model: the digest's recall on real keys (top-K and the next turn's needle
rows), and the whole repair of a long sample against re-prefilling its prompt. On a GPU the same command
measures the GPU (docs/runtime.md). Rows go to runs/phase07_runtime/; publish=true puts the CSVs and
the figure in saved_results/ and paper/figures/.
"""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from idlekv.environment import environment
from idlekv.results import ResultStore
from phases.common import load_phase_model, locked_model, phase_main
from phases.phase07_runtime import embedded, tiers
from phases.phase07_runtime.report import CELL, compact, ratios, summarize, write_figure
from phases.publish import companion, report_run, write_tables_and_figure

KEY_FIELDS = (*CELL, "index")


def tables(frame, config: dict, csv: Path) -> dict:
    """The summary (n, p50, p95, 95% intervals), the ratios the issue asks for, and the compact rows."""
    summary = summarize(frame)
    return {csv: summary, companion(csv, "ratios"): ratios(frame, summary), companion(csv, "rows"): compact(frame)}


def write_outputs(frame, config: dict, csv: Path, figure: Path) -> list[Path]:
    out = tables(frame, config, csv)
    print(out[companion(csv, "ratios")].to_string(index=False))
    title = f"{config['phase']['name']} on {config['device_name']}"
    return write_tables_and_figure(out, figure, lambda summary, path: write_figure(summary, path, title))


def expected_cells(config: dict) -> list[dict]:
    """Timing cells vary with the device and are checked by the run itself; nothing is required to publish."""
    return []


def device_of(cfg: DictConfig) -> str:
    return cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")


def repair_engine(cfg: DictConfig, lm):
    """The engine of phase03's 4Q pause (the config's rule, burst and digest) with its conditions, at phase.embedded's B and K."""
    from idlekv.engine import EngineConfig, RepairEngine
    from idlekv.repair.conditions import Condition
    from idlekv.repair.digest import DigestOptions
    from phases.common import rule_for_model

    repair, grid = cfg.repair, cfg.phase.embedded
    defaults = {"topk_burst": {"lo": repair.burst[0], "hi": repair.burst[1]}}
    conditions = [Condition.from_config(c, defaults) for c in OmegaConf.to_container(repair.conditions)]
    config = EngineConfig(budgets=[grid.budget], ks=[grid.k], conditions=conditions, window=cfg.retention.window,
                          max_new_tokens=grid.max_new_tokens, digest=DigestOptions(**OmegaConf.to_container(repair.digest)))
    return RepairEngine(lm.model, lm.tokenizer, rule_for_model(OmegaConf.to_container(cfg.retention), cfg.model.path), config)


def run(cfg: DictConfig, run_dir: Path) -> Path:
    phase, device = cfg.phase, device_of(cfg)
    name = torch.cuda.get_device_name(0) if device == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    locked = {"phase": OmegaConf.to_container(phase, resolve=True), "model": locked_model(cfg), "device_name": name}
    with ResultStore(run_dir, KEY_FIELDS, config=locked, environment=environment()) as store:
        def keep(rows) -> None:
            for row in rows:
                if not store.is_done(row):
                    store.append({**row, "device": device})

        keep(tiers.floor_rows(phase, device, store.is_done))
        for candidates in tqdm(phase.candidates, desc="latency vs warm candidates", unit="size"):
            keep(tiers.latency_rows(phase, candidates, device, store.is_done))
        for keys_model in tqdm(phase.recall.keys_models, desc="digest recall", unit="keys model"):
            keep(tiers.digest_tradeoff_rows(phase, keys_model, device, store.is_done))
        lm = load_phase_model(cfg, "phase07")
        engine = repair_engine(cfg, lm)
        keep(embedded.recall_rows(phase, engine, store.is_done))
        keep(embedded.reprefill_rows(phase, engine, device, store.is_done))
        store.write_csv(run_dir / "rows.csv")
        return report_run(store, run_dir, locked)[0]


main = phase_main(run, "phases.phase07_runtime.run", "phase07_runtime")


if __name__ == "__main__":
    main()
