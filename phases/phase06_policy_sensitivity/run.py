"""phase06: repair under every turn-1 rule (make policy).

phase03's engine, once per retention rule of `phase.rules` (each rule's configs/retention/<name>.yaml
with the phase's sinks and recent window): Full, Matched, IdleKV and Random-K at every (B, K) of
the grid, on the same samples for every rule. Ragged rules (PyramidKV, AdaKV) hold their padding
masked; ARKV holds its middle tier at its storage precision, promoted rows entering at full
precision (idlekv/repair/planned.py). Rows go to one resumable store under runs/<phase.name>/;
`make publish PHASE=phase06_policy_sensitivity` puts the summary, the paired differences (per
rule: every condition minus Matched), the per-sample rows and the figure (a panel per rule) in
saved_results/ and paper/figures/.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from idlekv.environment import environment
from idlekv.results import ResultStore
from phases.common import ROOT, load_phase_model, locked_model, phase_main
from phases.phase02_retention.run import rule_configs
from phases.phase03_repair import run as phase03
from phases.phase06_policy_sensitivity.report import compact, paired_by_rule, summarize_by_rule, write_figure
from phases.publish import companion, report_run, write_tables_and_figure

KEY_FIELDS = ("rule", *phase03.KEY_FIELDS)


def expected_cells(config: dict) -> list[dict]:
    return [{"rule": rule, **cell} for rule in config["phase"]["rules"] for cell in phase03.expected_cells(config)]


def tables(frame, config: dict, csv: Path) -> dict:
    """The summary (n, 95% intervals) per rule, the paired differences per rule, and the compact per-sample rows."""
    return {csv: summarize_by_rule(frame), companion(csv, "pairs"): paired_by_rule(frame), companion(csv, "rows"): compact(frame)}


def write_outputs(frame, config: dict, csv: Path, figure: Path) -> list[Path]:
    phase = config["phase"]
    title = f"{phase['name']}: {phase['num_keys']} needles, seed {phase['base_seed']}"
    return write_tables_and_figure(tables(frame, config, csv), figure, lambda summary, path: write_figure(summary, path, title))


def with_rule(cfg: DictConfig, name: str) -> DictConfig:
    """The config with `retention` replaced by rule `name`'s own options and the phase's sinks / recent window."""
    configs = rule_configs()
    if name not in configs:
        raise SystemExit(f"unknown rule {name!r}: no configs/retention/{name}.yaml; choose one of {sorted(configs)}")
    out = cfg.copy()
    out.retention = OmegaConf.create({**configs[name], **OmegaConf.to_container(cfg.phase.rule_options)})
    return out


def run(cfg: DictConfig, run_dir: Path) -> Path:
    phase = cfg.phase
    lm = load_phase_model(cfg, "phase06")
    locked = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("repair", "phase")} | {"model": locked_model(cfg), "seed": cfg.seed}
    with ResultStore(run_dir, KEY_FIELDS, config=locked, environment=environment()) as store:
        for name in phase.rules:
            rule_cfg = with_rule(cfg, name)
            engine = phase03.engine_from_config(rule_cfg, lm)
            cells = [(c.name, b, k) for c in engine.config.conditions for b in phase.budgets for k in phase.ks]
            todo = [(label, i) for label in phase.splits for i in range(phase.num_samples)
                    if not all(store.is_done({"rule": name, "task": phase.task, "split": label, "index": i, "condition": n, "B": b, "K": k})
                               for n, b, k in cells)]
            for label, index in tqdm(todo, desc=f"{phase.name} {name}", unit="sample"):
                sample = phase03.phase_sample(phase, label, index, lm.tokenizer)
                for row in engine.run_sample(sample, {"rule": name, "task": phase.task, "split": label}):
                    if not store.is_done(row):
                        store.append(row)
        store.write_csv(run_dir / "rows.csv")
        csv = report_run(store, run_dir, locked)[0]
    print(f"wrote {csv.relative_to(ROOT) if csv.is_relative_to(ROOT) else csv} (make publish PHASE={phase.name} publishes it)")
    return csv


main = phase_main(run, "phases.phase06_policy_sensitivity.run", "phase06_policy_sensitivity")


if __name__ == "__main__":
    main()
