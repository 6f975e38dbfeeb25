"""The acceptance lines on the shipped embedded model: `make repair`'s sweep on its test seed,
re-run into a temporary folder (about a minute on two cores, so `make test-slow`)."""

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.slow
def test_the_default_4q_sweep_meets_the_acceptance_lines(tmp_path):
    done = subprocess.run([sys.executable, "-m", "phases.phase03_repair.run", "experiment=phase03_repair_4q", "device=cpu",
                           f"phase.csv={tmp_path / 'summary.csv'}", f"phase.figure={tmp_path / 'frontier.png'}", "publish=true",
                           f"hydra.run.dir={tmp_path / 'run'}"],
                          cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    acc = pd.read_csv(tmp_path / "summary.csv").pivot_table(index=["B", "K"], columns="condition", values="accuracy")
    pairs = pd.read_csv(tmp_path / "summary_pairs.csv").set_index(["B", "K", "difference"])
    for b, part in acc.groupby(level="B"):
        largest = part.index.get_level_values("K").max()
        assert part["Full"].mean() >= 0.9
        idle = pairs.loc[(b, largest, "IdleKV - Matched")]  # the reference's algorithm, paired over samples
        assert idle["mean"] >= 0.3 and idle["ci_low"] > 0, (b, idle.to_dict())
        for control in ("Random-K", "Oldest-K"):  # reported with their intervals, whichever way they fall
            assert {(b, k, f"{control} - Matched") for k in part.index.get_level_values("K")} <= set(pairs.index)
