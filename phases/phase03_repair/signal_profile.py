"""Where each next-turn signal puts its top-K warm rows: why the proxy signal repairs less than the exact one.

At the pause (after compressing to B), every signal scores the warm rows; per (layer, KV head)
its K best rows are what a top-K repair would promote. This profile classifies those rows: the
asked needles' key tokens, their value tokens, the rest of their sentences, other needles' rows,
haystack rows that repeat a token of the next turn ("question copies"), and every other row;
and it reports how many of the asked values' rows each signal's top K holds (recall).

    python -m phases.phase03_repair.signal_profile experiment=phase03_specificity_4q

writes runs/<phase>/signal_profile.csv (`publish=true` copies it to saved_results/<phase>_signal_profile.csv).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import torch
from omegaconf import DictConfig
from tqdm import tqdm

from idlekv.engine import RepairEngine
from idlekv.intervals import interval_columns
from phases.common import ROOT, load_phase_model, phase_main
from phases.phase03_repair.run import engine_from_config, phase_sample
from phases.publish import atomic_path
from ruler import Sample

RUN_CSV = "signal_profile.csv"
SIGNALS = ("exact", "proxy", "proxy_centered", "stale", "rule")
CLASSES = ("asked key", "asked value", "asked sentence rest", "other needles", "question copies", "other rows")


def position_classes(sample: Sample, prompt: list[int], turn_ids: list[int], turn: int) -> torch.Tensor:
    """(context,) class index of each context position (CLASSES' order)."""
    out = torch.full((len(prompt),), CLASSES.index("other rows"), dtype=torch.long)
    asked = set(turn_ids)
    for p, token in enumerate(prompt):
        if token in asked:
            out[p] = CLASSES.index("question copies")
    for needle in sample.needles:
        out[needle.token_start:needle.token_end] = CLASSES.index("other needles")
    for needle in sample.needles_for_turn(turn):
        out[needle.token_start:needle.token_end] = CLASSES.index("asked sentence rest")
        out[needle.answer_token_start:needle.value_token_start] = CLASSES.index("asked key")
        out[needle.value_token_start:needle.value_token_end] = CLASSES.index("asked value")
    return out


@torch.no_grad()
def sample_profile(engine: RepairEngine, sample: Sample, budget: int, k: int) -> list[dict]:
    """Per signal: the share of its top-K warm rows in each class, and the asked values' rows it holds."""
    first = engine.turn_one(sample)
    pause = engine.pause_after_turn_one(sample, first, {})
    root, n_ctx = first.root, first.context_length
    comp = root.fork()
    comp.compress(engine.keep(pause.scores, budget, root, n_ctx), reserve=max(k, len(pause.turn_ids)))
    signals = engine.signals(comp, pause.turn_ids, first.question_queries, pause.scores, wanted=set(SIGNALS))
    classes = position_classes(sample, engine.rows_of(sample).prompt, pause.turn_ids, engine.config.turn)
    value = CLASSES.index("asked value")
    out = []
    for name in SIGNALS:
        scores = signals[name].scores
        for layer, (layer_scores, layer_positions) in enumerate(zip(scores.warm, scores.warm_positions)):
            top = layer_scores.float().topk(min(k, layer_scores.shape[-1]), dim=-1).indices
            chosen = classes[layer_positions.gather(-1, top).cpu()]
            counts = torch.bincount(chosen.reshape(-1), minlength=len(CLASSES)).float()
            held, missing = int((chosen == value).sum()), int((classes[layer_positions.cpu()] == value).sum())
            share = counts / counts.sum().clamp_min(1)
            out.append({"signal": name, "layer": layer, "index": sample.index,
                        "value_recall": held / missing if missing else float("nan"), **{c: float(s) for c, s in zip(CLASSES, share)}})
    return out


def run(cfg: DictConfig, run_dir: Path) -> Path:
    phase = cfg.phase
    lm = load_phase_model(cfg, "phase03")
    engine = engine_from_config(cfg, lm)
    budget, k = int(phase.budgets[0]), int(max(phase.ks))
    label = next(iter(phase.splits))
    rows = []
    for index in tqdm(range(phase.num_samples), desc=f"{phase.name} signal profile", unit="sample"):
        rows += sample_profile(engine, phase_sample(phase, label, index, lm.tokenizer), budget, k)
    frame = pd.DataFrame(rows)
    every = frame.groupby(["signal", "index"], sort=False)[["value_recall", *CLASSES]].mean().reset_index().assign(layer="all")
    both = pd.concat([every, frame], ignore_index=True)
    both["layer"] = both["layer"].astype(str)
    # per signal and layer ("all": each sample's mean over layers): value recall with n and a 95% interval
    table = interval_columns(both, ["signal", "layer"], "value_recall")
    shares = both.groupby(["signal", "layer"], sort=True)[list(CLASSES)].mean().round(4).reset_index()
    table = table.merge(shares, on=["signal", "layer"])
    table.insert(2, "B", budget)
    table.insert(3, "K", k)
    print(f"{phase.name}, seed {phase.base_seed}: the share of each signal's top {k} warm rows per head in each class, "
          "and the asked values' warm rows it holds")
    print(table.to_string(index=False))
    csv = run_dir / RUN_CSV
    csv.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(csv) as tmp:
        table.to_csv(tmp, index=False)
    return csv


def publish_profile(run_dir: Path) -> list[Path]:
    """publish=true: the run's profile into saved_results/<run folder name>_signal_profile.csv."""
    destination = ROOT / "saved_results" / f"{run_dir.name}_signal_profile.csv"
    with atomic_path(destination) as tmp:
        shutil.copyfile(run_dir / RUN_CSV, tmp)
    return [destination]


main = phase_main(run, "phases.phase03_repair.signal_profile", "phase03_specificity_4q", publisher=publish_profile)


if __name__ == "__main__":
    main()
