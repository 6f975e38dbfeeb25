"""phase03 on RULER's split-turn variable tracking (a non-needle task), on a random tiny model:
every condition runs, the chains' assignment lines are the turn's needles, the tables have intervals."""

import pandas as pd

from idlekv.config import compose
from phases.phase03_repair.run import phase_sample, run


def test_phase03_runs_split_variable_tracking(tiny_model_dir, tmp_path):
    cfg = compose([
        "experiment=phase03_repair_vt", f"model.path={tiny_model_dir}", "device=cpu", "phase.num_samples=2", "phase.length=2048",
        "phase.budgets=[96]", "phase.ks=[8]", "phase.max_new_tokens=3", "retention.recent=16",
        f"phase.csv={tmp_path / 'vt.csv'}", f"phase.figure={tmp_path / 'vt.png'}",
    ])
    summary = pd.read_csv(run(cfg, tmp_path / "run"))
    assert set(summary["condition"]) == {"Full", "Matched", "IdleKV", "Random-K", "Oldest-K"} and {"ci_low", "ci_high"} <= set(summary)
    from idlekv.models import load_model

    sample = phase_sample(cfg.phase, "clean", 0, load_model(tiny_model_dir, device="cpu").tokenizer)
    assert [len(sample.needles_for_turn(t)) for t in (0, 1)] == [5, 5]  # each turn's chain: its 5 assignment lines
