"""phase04 end to end on a random tiny model: every variant, condition and turn, intervals, resume, nothing published."""

import pandas as pd

from idlekv.config import compose
from phases.phase04_multiturn.run import expected_cells, run


def test_phase04_runs_resumes_and_reports_intervals(tiny_model_dir, tmp_path):
    cfg = compose(["experiment=phase04_multiturn", f"model.path={tiny_model_dir}", "device=cpu", "phase.length=640",
                   "phase.num_samples=2", "phase.num_keys=6", "phase.schedule=[[0,1],[2,3],[4,0]]", "phase.budget=80",
                   "phase.k=8", "phase.max_new_tokens=3", f"phase.csv={tmp_path / 'p4.csv'}", f"phase.figure={tmp_path / 'p4.png'}"])
    csv = run(cfg, tmp_path / "run")
    summary = pd.read_csv(csv, dtype={"turn": str})
    rows = (tmp_path / "run" / "rows.jsonl").read_text().splitlines()
    assert len(rows) == len(expected_cells({"phase": dict(cfg.phase), "repair": {"conditions": list(cfg.repair.conditions)}}))
    per_turn = summary[summary["turn"].isin(["1", "2", "3"]) & ~summary["condition"].str.contains(" - ")]
    assert len(per_turn) == 2 * 5 * 3 and (per_turn["n"] == 2).all()
    assert (summary["ci_low"] <= summary["accuracy"]).all() and (summary["accuracy"] <= summary["ci_high"]).all()
    assert {"IdleKV - Matched", "Random-K - Matched", "Oldest-K - Matched"} <= set(summary["condition"])
    assert "cumulative - non_cumulative" in set(summary["variant"])
    assert (tmp_path / "run" / "figure.png").stat().st_size > 0 and not (tmp_path / "p4.csv").exists()
    run(cfg, tmp_path / "run")  # a rerun finds every cell done
    assert (tmp_path / "run" / "rows.jsonl").read_text().splitlines() == rows
