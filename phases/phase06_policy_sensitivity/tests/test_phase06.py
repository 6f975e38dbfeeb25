"""phase06 on a random tiny model: every rule of the grid runs through the same engine and samples,
the tables carry n and intervals per rule, resume finds every cell done, and the outputs re-derive."""

import pandas as pd

from idlekv.config import compose
from phases.phase06_policy_sensitivity.run import run, tables


def test_phase06_runs_every_rule_resumes_and_reports(tiny_model_dir, tmp_path):
    cfg = compose([
        "experiment=phase06_policy_sensitivity", f"model.path={tiny_model_dir}", "device=cpu", "phase.num_samples=2",
        "phase.length=640", "phase.budgets=[80]", "phase.ks=[8]", "phase.max_new_tokens=3", "phase.rules=[snapkv,pyramidkv,arkv]",
        f"phase.csv={tmp_path / 'phase06.csv'}", f"phase.figure={tmp_path / 'phase06.png'}",
    ])
    csv = run(cfg, tmp_path / "run")
    summary = pd.read_csv(csv)
    assert set(summary["rule"]) == {"snapkv", "pyramidkv", "arkv"}
    assert set(summary["condition"]) == {"Full", "Matched", "IdleKV", "Random-K"} and set(summary["samples"]) == {2}
    pairs = pd.read_csv(tmp_path / "run" / "summary_pairs.csv")
    assert {"snapkv", "pyramidkv", "arkv"} == set(pairs[pairs["difference"] == "IdleKV - Matched"]["rule"])
    rows = (tmp_path / "run" / "rows.jsonl").read_text().splitlines()
    assert len(rows) == 3 * 2 * 4
    run(cfg, tmp_path / "run")  # a rerun finds every cell done
    assert (tmp_path / "run" / "rows.jsonl").read_text().splitlines() == rows
    frame = pd.read_csv(tmp_path / "run" / "summary_rows.csv.gz")
    again = tables(frame, {"phase": dict(cfg.phase)}, tmp_path / "x.csv")
    assert again[tmp_path / "x.csv"].round(4).equals(summary.round(4))  # the tables re-derive from the compact rows
