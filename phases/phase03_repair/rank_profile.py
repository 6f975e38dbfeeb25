"""Where the turn-1 rule ranks each kind of context row: why Matched does or does not rise with K.

Matched at B+K keeps the rule's next K rows. It stays flat (as in the reference) only when
those rows are no likelier to be turn-2 needle rows than random haystack rows; it rises when
the rule ranks turn-2 needles just past B. This profile measures that, per (layer, KV head):
the share of each row class (turn-1 needle rows, turn-2 needle rows, every other context row:
the haystack and the instruction) whose rank falls in each band, with bands cut at the experiment's budgets and B + max K.

    python -m phases.phase03_repair.rank_profile experiment=phase03_repair_4q

writes runs/<phase>/rank_profile.csv (per layer and head; `publish=true` copies it to
saved_results/<phase>_rank_profile.csv, or `+phase.rank_profile_csv=`) and prints, per B, how
many times likelier a turn-2 needle row is than a haystack row to be among Matched's next K
rows ("enrichment"; 1 = Matched no better than Random-K) and how much likelier the rule is
to keep a turn-1 needle row than a turn-2 one within B ("specificity"; 1 = the turn-1 window
does not tell the needles apart).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from idlekv.engine import RepairEngine
from idlekv.intervals import interval_columns
from phases.common import ROOT, load_phase_model, phase_main
from phases.phase03_repair.run import engine_from_config, phase_sample
from phases.publish import atomic_path
from ruler import Sample

RUN_CSV = "rank_profile.csv"


def band_edges(protected: int, budgets: list[int], max_k: int, n: int) -> list[int]:
    """Rank cut points: the rule's forced rows, every B, every B + max K, the end."""
    cuts = {protected, n, *budgets, *(b + max_k for b in budgets)}
    return sorted(c for c in cuts if 0 < c <= n)


def row_classes(sample: Sample, n: int, turn: int) -> dict[str, list[int]]:
    """Context positions of each class; needles of neither turn count with neither class."""
    first = [p for nd in sample.needles_for_turn(turn - 1) for p in range(nd.token_start, nd.token_end)]
    second = [p for nd in sample.needles_for_turn(turn) for p in range(nd.token_start, nd.token_end)]
    needles = {p for nd in sample.needles for p in range(nd.token_start, nd.token_end)}
    return {"turn-1 needles": first, "turn-2 needles": second, "other rows": [p for p in range(n) if p not in needles]}


@torch.no_grad()
def sample_profile(engine: RepairEngine, sample: Sample, budgets: list[int], max_k: int) -> pd.DataFrame:
    """Share of each class's rows per rank band, per (layer, head), for one sample."""
    first = engine.turn_one(sample)
    ranking = engine.rule.ranking(engine.rule.score(first.rule_inputs()))  # (layers, heads, n) best first
    layers, heads, n = ranking.shape
    rank = torch.empty_like(ranking)
    rank.scatter_(-1, ranking, torch.arange(n, device=ranking.device).expand_as(ranking))
    edges = band_edges(engine.rule.sinks + engine.rule.recent, budgets, max_k, n)
    lower = [0, *edges[:-1]]
    rows = []
    for name, positions in row_classes(sample, n, engine.config.turn).items():
        if not positions:
            continue
        r = rank[..., positions]
        for lo, hi in zip(lower, edges):
            share = ((r >= lo) & (r < hi)).float().mean(-1)
            rows += [{"class": name, "band": f"{lo}-{hi}", "lo": lo, "hi": hi, "layer": layer, "head": head,
                      "share": float(share[layer, head])} for layer in range(layers) for head in range(heads)]
    return pd.DataFrame(rows)


def enrichment(profile: pd.DataFrame, budget: int, max_k: int) -> dict:
    """Per budget: turn-2 vs other rows' odds of Matched's next K rows, and turn-1 vs turn-2 odds of the top B."""
    mean = profile.groupby(["class", "lo", "hi"])["share"].mean()

    def share(name: str, lo: int, hi: int) -> float:
        part = mean[name]
        return float(part[(part.index.get_level_values("lo") >= lo) & (part.index.get_level_values("hi") <= hi)].sum())

    t2_next, other_next = share("turn-2 needles", budget, budget + max_k), share("other rows", budget, budget + max_k)
    t1_kept, t2_kept = share("turn-1 needles", 0, budget), share("turn-2 needles", 0, budget)
    return {"B": budget, "next_K": max_k, "turn2_share_next": t2_next, "other_share_next": other_next,
            "enrichment": t2_next / other_next if other_next else float("inf"), "turn1_share_kept": t1_kept,
            "turn2_share_kept": t2_kept, "specificity": t1_kept / t2_kept if t2_kept else float("inf")}


def run(cfg: DictConfig, run_dir: Path) -> Path:
    phase = cfg.phase
    lm = load_phase_model(cfg, "phase03")
    engine = engine_from_config(cfg, lm)
    budgets, max_k = list(phase.budgets), max(phase.ks)
    frames = []
    for label in phase.splits:
        for index in tqdm(range(phase.num_samples), desc=f"{phase.name} rank profile", unit="sample"):
            sample = phase_sample(phase, label, index, lm.tokenizer)
            frames.append(sample_profile(engine, sample, budgets, max_k).assign(split=label, index=index))
    profile = pd.concat(frames, ignore_index=True)
    csv = run_dir / RUN_CSV
    csv.parent.mkdir(parents=True, exist_ok=True)
    # per (layer, head, band): the mean share over samples, with n and its 95% bootstrap interval
    table = interval_columns(profile, ["split", "class", "band", "lo", "layer", "head"], "share")
    table = table.sort_values(["split", "class", "lo", "layer", "head"]).drop(columns="lo")
    with atomic_path(csv) as tmp:
        table.to_csv(tmp, index=False)
    print(profile.groupby(["class", "lo", "band"])["share"].mean().unstack("class").droplevel("lo").round(3).to_string())
    for b in budgets:
        e = enrichment(profile, b, max_k)
        print(f"B={b}: Matched's next {max_k} rows hold {e['turn2_share_next']:.3f} of the turn-2 needle rows and "
              f"{e['other_share_next']:.3f} of the other rows (enrichment {e['enrichment']:.1f}x); within B the rule keeps "
              f"{e['turn1_share_kept']:.3f} of the turn-1 needle rows and {e['turn2_share_kept']:.3f} of the turn-2 ones "
              f"(specificity {e['specificity']:.2f}x)")
        per_layer = [enrichment(profile[profile["layer"] == layer], b, max_k) for layer in sorted(profile["layer"].unique())]
        print("    per layer: specificity " + ", ".join(f"{x['specificity']:.2f}x" for x in per_layer)
              + "; enrichment " + ", ".join(f"{x['enrichment']:.1f}x" for x in per_layer))
    (run_dir / "rank_profile_config.json").write_text(json.dumps(OmegaConf.to_container(phase, resolve=True)))
    print(f"wrote {csv} (publish=true puts it in saved_results/)")
    return csv


def publish_profile(run_dir: Path) -> list[Path]:
    """publish=true: the run's profile into saved_results/<phase.name>_rank_profile.csv (atomically)."""
    phase = json.loads((run_dir / "rank_profile_config.json").read_text())
    destination = ROOT / phase.get("rank_profile_csv", f"saved_results/{phase['name']}_rank_profile.csv")
    with atomic_path(destination) as tmp:
        shutil.copyfile(run_dir / RUN_CSV, tmp)
    return [destination]


main = phase_main(run, "phases.phase03_repair.rank_profile", "phase03_repair_4q", publisher=publish_profile)


if __name__ == "__main__":
    main()
