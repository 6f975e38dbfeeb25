"""phase04: the multi-turn session (make multiturn).

Five turns of one conversation per sample, one cache per condition carried across them and
repaired at every pause (idlekv/session.py), cumulative and non-cumulative. Rows (one per
sample, variant, condition and turn) go to a resumable store under runs/<phase.name>/; the
summary (per-turn accuracy, the mean over turns 2-5, paired differences to Matched, each with
n and a 95% bootstrap interval; the warm tier's size and the rows evicted again by turn) and
the figure are rebuilt there; `make publish PHASE=phase04_multiturn` publishes them.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from idlekv.environment import environment
from idlekv.repair.conditions import Condition
from idlekv.repair.digest import DigestOptions
from idlekv.results import ResultStore
from idlekv.session import SessionConfig, SessionEngine
from phases.common import ROOT, load_phase_model, locked_model, phase_main, rule_for_model
from phases.phase04_multiturn.report import compact, summarize, write_figure
from phases.publish import companion, report_run, write_tables_and_figure
from ruler import generate

KEY_FIELDS = ("task", "index", "variant", "condition", "turn")
VARIANTS = {"cumulative": True, "non_cumulative": False}


def expected_cells(config: dict) -> list[dict]:
    phase = config["phase"]
    names = [c["name"] for c in config["repair"]["conditions"]]
    return [{"task": phase["task"], "index": i, "variant": v, "condition": n, "turn": t + 1}
            for i in range(phase["num_samples"]) for v in phase["variants"] for n in names
            for t in range(len(phase["schedule"]))]


def tables(frame, config: dict, csv: Path) -> dict:
    """The summary (n, 95% intervals, paired differences) and the compact per-sample rows it re-derives from."""
    return {csv: summarize(frame), companion(csv, "rows"): compact(frame)}


def write_outputs(frame, config: dict, csv: Path, figure: Path) -> list[Path]:
    phase = config["phase"]
    title = f"{phase['name']}: {len(phase['schedule'])} turns, B={phase['budget']}, K={phase['k']}"
    return write_tables_and_figure(tables(frame, config, csv), figure, lambda summary, path: write_figure(summary, path, title))


def phase_sample(phase, index: int, tokenizer):
    return generate(phase.task, phase.length, index, tokenizer, phase.base_seed, num_keys=phase.num_keys,
                    num_queries=phase.num_keys, split="schedule", schedule=OmegaConf.to_container(phase.schedule),
                    recency_window=phase.recency_window)


def engines(cfg: DictConfig, lm) -> dict[str, SessionEngine]:
    repair, phase = cfg.repair, cfg.phase
    defaults = {"topk_burst": {"lo": repair.burst[0], "hi": repair.burst[1]}, "coverage": {"width": repair.coverage_width}}
    conditions = [Condition.from_config(c, defaults) for c in OmegaConf.to_container(repair.conditions)]
    rule = rule_for_model(OmegaConf.to_container(cfg.retention), cfg.model.path)
    return {v: SessionEngine(lm.model, lm.tokenizer, rule, SessionConfig(
        phase.budget, phase.k, conditions, cumulative=VARIANTS[v], window=cfg.retention.window,
        max_new_tokens=phase.max_new_tokens, warm_precision=repair.warm_precision, chunk_rows=repair.chunk_rows,
        digest=DigestOptions(**OmegaConf.to_container(repair.digest))))
        for v in phase.variants}


def run(cfg: DictConfig, run_dir: Path) -> Path:
    phase = cfg.phase
    unknown = sorted(set(phase.variants) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"phase.variants {unknown} not in {sorted(VARIANTS)}")
    lm = load_phase_model(cfg, "phase04")
    sessions = engines(cfg, lm)
    locked = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("retention", "repair", "phase")} | {"model": locked_model(cfg)}
    with ResultStore(run_dir, KEY_FIELDS, config=locked, environment=environment()) as store:
        turns, names = len(phase.schedule), [c.name for c in cfg.repair.conditions]
        for index in tqdm(range(phase.num_samples), desc=phase.name, unit="sample"):
            todo = [v for v in phase.variants if not all(store.is_done({"task": phase.task, "index": index, "variant": v,
                                                                        "condition": n, "turn": t + 1})
                                                         for n in names for t in range(turns))]
            if not todo:
                continue
            sample = phase_sample(phase, index, lm.tokenizer)
            for variant in todo:
                for row in sessions[variant].run_sample(sample, {"task": phase.task, "variant": variant}):
                    if not store.is_done(row):
                        store.append(row)
        store.write_csv(run_dir / "rows.csv")
        csv = report_run(store, run_dir, locked)[0]
    print(summarize(store.to_frame()).to_string(index=False))
    print(f"wrote {csv.relative_to(ROOT) if csv.is_relative_to(ROOT) else csv} (make publish PHASE={phase.name} publishes it)")
    return csv


main = phase_main(run, "phases.phase04_multiturn.run", "phase04_multiturn")


if __name__ == "__main__":
    main()
