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
from phases.phase02_retention.report import summarize, write_figure
from phases.publish import report_run, write_table_and_figure
from ruler import generate

KEY_FIELDS = ("task", "length", "index", "mode", "rule", "budget_fraction")
MODES = ("aware", "agnostic")


def rule_from_config(name: str, rule_options, model_path: str) -> object:
    """The rule's own config file (configs/retention/<name>.yaml), with the phase's sinks/recent."""
    path = Path(CONFIG_DIR) / "retention" / f"{name}.yaml"
    if not path.is_file():
        raise SystemExit(f"unknown rule {name!r}: no {path}")
    options = OmegaConf.to_container(OmegaConf.load(path))
    if options["name"] != "keep_all":
        options.update(OmegaConf.to_container(rule_options))
    return rule_for_model(options, model_path)


def expected_cells(config: dict) -> list[dict]:
    phase = config["phase"]
    rules = [(name, f) for name in phase["rules"] for f in phase["budget_fractions"]] + [("keep_all", 1.0)]
    return [{"task": task["label"], "length": int(length), "index": index, "mode": mode, "rule": name, "budget_fraction": float(f)}
            for task in phase["tasks"] for length in phase["lengths"] for index in range(phase["num_samples"])
            for mode in phase["modes"] for name, f in rules]


def write_outputs(frame, config: dict, csv: Path, figure: Path) -> list[Path]:
    summary = summarize(frame)
    print(summary.to_string(index=False))
    return write_table_and_figure(summary, csv, figure, write_figure)


def run(cfg: DictConfig, run_dir: Path) -> Path:
    phase = cfg.phase
    bad = sorted(set(phase.modes) - set(MODES))
    if bad:
        raise SystemExit(f"phase.modes {bad} not in {MODES}")
    lm = load_phase_model(cfg, "phase02")
    rules = {name: rule_from_config(name, phase.rule_options, cfg.model.path) for name in [*phase.rules, "keep_all"]}
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
