"""The rank profile: bands, row classes, and what it says about rules whose ranking is known."""

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from idlekv.engine import EngineConfig, RepairEngine
from idlekv.models import load_model
from idlekv.retention.base import RetentionInputs, RetentionRule
from phases.phase03_repair.rank_profile import band_edges, enrichment, row_classes, sample_profile
from ruler import generate

ROOT = Path(__file__).resolve().parents[3]


@dataclass
class Favours(RetentionRule):
    """Scores the given positions highest, the rest by position (a known ranking)."""

    favoured: tuple[int, ...] = ()

    def score(self, inputs: RetentionInputs) -> torch.Tensor:
        n = inputs.context_length
        scores = -torch.arange(n, dtype=torch.float32)
        scores[list(self.favoured)] = 1e6
        return scores.expand(inputs.num_layers, inputs.keys[0].shape[0], n).clone()


def test_band_edges_cut_at_protected_rows_budgets_and_budget_plus_k():
    assert band_edges(20, [32, 64], 24, 900) == [20, 32, 56, 64, 88, 900]
    assert band_edges(20, [880], 24, 900) == [20, 880, 900]  # B + K past the context is dropped


def test_a_rule_that_keeps_the_turn_two_needles_shows_in_the_profile(tiny_model_dir):
    lm = load_model(tiny_model_dir, device="cpu")
    sample = generate("mq_niah_4q_embedded", 640, 0, lm.tokenizer, 0, split="clean", recency_window=64, num_keys=4, num_queries=4)
    classes = row_classes(sample, 10_000, turn=1)
    second = classes["turn-2 needles"]
    assert second and classes["turn-1 needles"] and not set(second) & set(classes["turn-1 needles"])
    rule = Favours(sinks=4, recent=16, favoured=tuple(second))
    engine = RepairEngine(lm.model, lm.tokenizer, rule, EngineConfig(budgets=[20 + len(second)], ks=[8], max_new_tokens=2))
    profile = sample_profile(engine, sample, [20 + len(second)], 8)
    totals = profile.groupby(["class", "layer", "head"])["share"].sum()
    assert ((totals - 1.0).abs() < 1e-6).all()  # every row falls in exactly one band
    e = enrichment(profile, 20 + len(second), 8)
    assert e["turn2_share_kept"] == 1.0 and e["turn2_share_next"] == 0.0  # all kept within B, none left for Matched's K
    assert e["turn1_share_kept"] < 0.5 and e["specificity"] < 0.5


def test_the_command_writes_the_profile(tiny_model_dir, tmp_path):
    csv = tmp_path / "profile.csv"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-m", "phases.phase03_repair.rank_profile", "experiment=phase03_repair_4q",
                           f"model.path={tiny_model_dir}", "device=cpu", "phase.num_samples=2", "phase.length=640",
                           "phase.budgets=[40]", "phase.max_new_tokens=2", "retention.recent=16", f"+phase.rank_profile_csv={csv}", "publish=true",
                           f"hydra.run.dir={tmp_path / 'run'}"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    frame = pd.read_csv(csv)
    assert set(frame["class"]) == {"turn-1 needles", "turn-2 needles", "other rows"}
    assert "B=40:" in done.stdout and "enrichment" in done.stdout
