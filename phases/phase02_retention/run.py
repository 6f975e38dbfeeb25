"""phase02: retention rules with eviction applied inside the model (make retention).

For every (task, length, sample, mode) one prefill is made; every rule scores it and keeps
each budget fraction of the context rows per KV head; the question is answered over each
compressed cache. Rows go to a resumable store under runs/<phase.name>/, with the CSV and
figure rebuilt there from all rows; `make publish PHASE=phase02_retention` puts them in
saved_results/ and paper/figures/.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from idlekv.compressed_answer import CompressedQuestion
from idlekv.config import CONFIG_DIR
from idlekv.environment import environment
from idlekv.results import ResultStore
from phases.common import load_phase_model, locked_model, phase_main, rule_for_model
from phases.phase02_retention.report import compact, summarize, write_figure
from phases.publish import companion, report_run, write_tables_and_figure
from ruler import generate

KEY_FIELDS = ("task", "length", "index", "mode", "rule", "budget_fraction")
MODES = ("aware", "agnostic")


def rule_configs() -> dict[str, dict]:
    """Every rule configuration (configs/retention/<name>.yaml), by file name."""
    return {path.stem: OmegaConf.to_container(OmegaConf.load(path)) for path in sorted((Path(CONFIG_DIR) / "retention").glob("*.yaml"))}


def rule_names(phase) -> list[str]:
    """The phase's rules: `all` is every rule configuration but keep_all (the ceiling, always run)."""
    rules = phase["rules"]
    return [name for name in rule_configs() if name != "keep_all"] if rules == "all" else list(rules)


def rule_from_config(name: str, rule_options, model_path: str) -> object:
    """The rule's own config file (configs/retention/<name>.yaml), with the phase's sinks/recent."""
    configs = rule_configs()
    if name not in configs:
        raise SystemExit(f"unknown rule {name!r}: no configs/retention/{name}.yaml; choose one of {sorted(configs)}")
    options = dict(configs[name])
    if options["name"] != "keep_all":
        options.update(OmegaConf.to_container(rule_options))
    return rule_for_model(options, model_path)


def expected_cells(config: dict) -> list[dict]:
    phase = config["phase"]
    rules = [(name, f) for name in rule_names(phase) for f in phase["budget_fractions"]] + [("keep_all", 1.0)]
    return [{"task": task["label"], "length": int(length), "index": index, "mode": mode, "rule": name, "budget_fraction": float(f)}
            for task in phase["tasks"] for length in phase["lengths"] for index in range(phase["num_samples"])
            for mode in phase["modes"] for name, f in rules]


def tables(frame, config: dict, csv: Path) -> dict:
    """The summary (n, 95% intervals) and the compact per-sample rows it re-derives from."""
    return {csv: summarize(frame), companion(csv, "rows"): compact(frame)}


def write_outputs(frame, config: dict, csv: Path, figure: Path) -> list[Path]:
    out = tables(frame, config, csv)
    print(out[csv].to_string(index=False))
    title = f"{config['phase']['name']}: seed {config['phase']['base_seed']}"
    return write_tables_and_figure(out, figure, lambda summary, path: write_figure(summary, path, title))


def run(cfg: DictConfig, run_dir: Path) -> Path:
    phase = cfg.phase
    bad = sorted(set(phase.modes) - set(MODES))
    if bad:
        raise SystemExit(f"phase.modes {bad} not in {MODES}")
    lm = load_phase_model(cfg, "phase02")
    rules = {name: rule_from_config(name, phase.rule_options, cfg.model.path) for name in [*rule_names(phase), "keep_all"]}
    locked = {"model": locked_model(cfg), "phase": OmegaConf.to_container(phase)}
    with ResultStore(run_dir, KEY_FIELDS, config=locked, environment=environment()) as store:
        answer_cells(store, phase, lm, rules)
        store.write_csv(run_dir / "rows.csv")
        return report_run(store, run_dir, locked)[0]


def answer_cells(store: ResultStore, phase: DictConfig, lm, rules: dict) -> None:
    floor = phase.rule_options.sinks + phase.rule_options.recent
    samples = [(task, length, index, mode) for task in phase.tasks for length in phase.lengths
               for index in range(phase.num_samples) for mode in phase.modes]
    for task, length, index, mode in tqdm(samples, desc=phase.name, unit="sample"):
        cell = {"task": task.label, "length": int(length), "index": index, "mode": mode}
        fractions = {name: [1.0] if name == "keep_all" else list(phase.budget_fractions) for name in rules}
        todo = {name: [f for f in fs if not store.is_done({**cell, "rule": name, "budget_fraction": float(f)})] for name, fs in fractions.items()}
        todo = {name: fs for name, fs in todo.items() if fs}
        if not todo:
            continue
        sample = generate(task.name, int(length), index, lm.tokenizer, phase.base_seed, **OmegaConf.to_container(task.options))
        setup = CompressedQuestion(lm.model, lm.tokenizer, sample, mode == "aware", phase.agnostic_window, phase.max_new_tokens,
                                   prefill_queries=any(rules[name].needs_prefill_queries for name in todo))
        for name, fs in todo.items():
            chosen = [(float(f), setup.row_budget(rules[name], f, floor)) for f in fs] if name != "keep_all" else [(1.0, setup.context_tokens)]
            for (fraction, _), row in zip(chosen, setup.answers(rules[name], [b for _, b in chosen])):
                store.append({**cell, "rule": name, "budget_fraction": fraction, **row})


main = phase_main(run, "phases.phase02_retention.run", "phase02_retention")


if __name__ == "__main__":
    main()
