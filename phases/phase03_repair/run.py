"""phase03: the matched-budget repair frontier (make repair).

Composes the repair engine with the experiment config: for every split and sample, every
condition of every (B, K) cell. Rows go to a resumable store under runs/<phase.name>/, with
the summary CSV and the frontier figure rebuilt there from all rows; `make publish` (or
`publish=true`) puts them in saved_results/ and paper/figures/.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from idlekv.engine import EngineConfig, RepairEngine
from idlekv.environment import environment
from idlekv.models import LoadedModel
from idlekv.repair.conditions import Condition
from idlekv.repair.digest import DigestOptions
from idlekv.repair.memory import DoesNotFit
from idlekv.results import ResultStore
from idlekv.tracking import make_logger
from phases.common import ROOT, load_phase_model, locked_model, phase_main, rule_for_model
from phases.phase03_repair.report import BASELINES, compact, paired_differences, summarize, write_frontier, write_regime
from phases.publish import atomic_path, companion, report_run, write_tables
from ruler import generate
from ruler.generation import NON_NIAH_TASKS

KEY_FIELDS = ("task", "split", "index", "condition", "B", "K")
GRID_KEYS = ("phase.ks", "phase.budgets")  # what a sweep may vary between jobs (see idlekv/collect.py)


def expected_cells(config: dict) -> list[dict]:
    """Every cell a run of this locked config must produce."""
    phase = config["phase"]
    names = [c["name"] for c in config["repair"]["conditions"]]
    return [{"task": phase["task"], "split": split, "index": i, "condition": n, "B": b, "K": k}
            for split in phase["splits"] for i in range(phase["num_samples"]) for n in names
            for b in phase["budgets"] for k in phase["ks"]]


def tables(frame, config: dict, csv: Path) -> dict:
    """The summary (n and 95% intervals), the paired differences and the compact per-sample rows."""
    baselines = config["phase"].get("baselines", BASELINES)  # an experiment may pair against more (IdleKV, for its variants)
    return {csv: summarize(frame), companion(csv, "pairs"): paired_differences(frame, baselines), companion(csv, "rows"): compact(frame)}


def write_outputs(frame, config: dict, csv: Path, figure: Path) -> list[Path]:
    """The tables and the frontier (or regime) figure, from all rows."""
    out = tables(frame, config, csv)
    written = write_tables(out)
    summary, pairs = out[csv], out[companion(csv, "pairs")]
    phase = config["phase"]
    title = f"{phase['name']}: {phase['num_keys']} needles, seed {phase['base_seed']}"
    with atomic_path(figure) as tmp:
        if phase.get("figure_kind", "frontier") == "regime":
            write_regime(summary, pairs, tmp, title)
        else:
            write_frontier(summary, tmp, title)
    return [*written, figure]


def phase_sample(phase: DictConfig, label: str, index: int, tokenizer):
    """Sample `index` of the split `label`, as the phase config defines them.

    `+phase.num_distractors=N` adds N needles that no turn asks about (RULER's multikey distractors).
    A non-NIAH task (vt_split, cwe, fwe) takes its split's options only: its own rows are its needles.
    """
    options = OmegaConf.to_container(phase.splits[label])
    if phase.task not in NON_NIAH_TASKS:
        options.update(num_keys=phase.num_keys + phase.get("num_distractors", 0), num_queries=phase.num_keys)
    return generate(phase.task, phase.length, index, tokenizer, phase.base_seed, **options)


def engine_from_config(cfg: DictConfig, lm) -> RepairEngine:
    rule = rule_for_model(OmegaConf.to_container(cfg.retention), cfg.model.path)
    repair = cfg.repair
    # the repair config's burst and coverage width are the options of conditions that set none
    defaults = {"topk_burst": {"lo": repair.burst[0], "hi": repair.burst[1]}, "coverage": {"width": repair.coverage_width}}
    conditions = [Condition.from_config(c, defaults) for c in OmegaConf.to_container(repair.conditions)]
    engine_cfg = EngineConfig(
        budgets=list(cfg.phase.budgets), ks=list(cfg.phase.ks), conditions=conditions, window=cfg.retention.window,
        max_new_tokens=cfg.phase.max_new_tokens, warm_precision=repair.warm_precision, chunk_rows=repair.chunk_rows,
        seed=cfg.seed, digest=DigestOptions(**OmegaConf.to_container(repair.digest)),
        resume_batch_rows=repair.resume_batch_rows,
    )
    return RepairEngine(lm.model, lm.tokenizer, rule, engine_cfg)


def check_memory(cfg: DictConfig) -> str:
    """The predicted peak device memory of this config, before any weight is loaded; refuses what cannot fit."""
    import torch
    from transformers import AutoTokenizer

    from idlekv.models import check_model_folder, resolve_dtype
    from idlekv.repair.memory import KVShape, check_fits, weights_bytes

    folder, config = check_model_folder(ROOT / cfg.model.path)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    engine = engine_from_config(cfg, LoadedModel(None, tokenizer, None, folder))
    sample = phase_sample(cfg.phase, next(iter(cfg.phase.splits)), 0, tokenizer)
    dtype = resolve_dtype(cfg.model.dtype)
    device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    return check_fits(engine.predicted_peak(sample, KVShape.from_config(config, dtype)), weights_bytes(folder, dtype), device,
                      cfg.phase.name)


def run(cfg: DictConfig, run_dir: Path) -> Path:
    phase = cfg.phase
    try:
        print(check_memory(cfg), flush=True)
    except DoesNotFit as err:
        raise SystemExit(str(err)) from None
    lm = load_phase_model(cfg, "phase03")
    engine = engine_from_config(cfg, lm)
    locked = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("retention", "repair", "phase")} | {"model": locked_model(cfg), "seed": cfg.seed}
    env = environment()
    with ResultStore(run_dir, KEY_FIELDS, config=locked, environment=env) as store:
        logger = make_logger(OmegaConf.to_container(cfg.logger), run_dir, locked, env)
        cells_per_sample = [(c.name, b, k) for c in engine.config.conditions for b in phase.budgets for k in phase.ks]
        work = [(label, i) for label in phase.splits for i in range(phase.num_samples)]
        todo = [(label, i) for label, i in work
                if not all(store.is_done({"task": phase.task, "split": label, "index": i, "condition": n, "B": b, "K": k}) for n, b, k in cells_per_sample)]
        uses_wrong = any(c.signal == "wrong" for c in engine.config.conditions)
        for label, index in tqdm(todo, desc=phase.name, unit="sample"):
            sample = phase_sample(phase, label, index, lm.tokenizer)
            # WrongQ-K scores with another sample's next turn, of the same task: one outside the grid
            wrong = phase_sample(phase, label, index + phase.num_samples, lm.tokenizer) if uses_wrong else None
            for row in engine.run_sample(sample, {"task": phase.task, "split": label}, wrong=wrong):
                if not store.is_done(row):
                    store.append(row)
                    logger.log_row(row)
        csv, *_, figure = report_run(store, run_dir, locked)
        store.write_csv(run_dir / "rows.csv")
        logger.log_figure(figure)
        logger.finish()
        print(summarize(store.to_frame())[["split", "B", "K", "condition", "samples", "accuracy"]].to_string(index=False))
    print(f"wrote {csv.relative_to(ROOT)} and {figure.relative_to(ROOT)} (make publish PHASE={phase.name} puts them in "
          f"{phase.csv} and {phase.figure})" if run_dir.is_relative_to(ROOT) else f"wrote {csv} and {figure}")
    return csv


main = phase_main(run, "phases.phase03_repair.run", "phase03_repair_4q")


if __name__ == "__main__":
    main()
