"""The issue's acceptance lines on the shipped embedded model: `make repair`'s sweep, re-run
into a temporary folder (about a minute on two cores, so `make test-slow`)."""

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
    for b, part in acc.groupby(level="B"):
        full, idle, matched = part["Full"].mean(), part["IdleKV"], part["Matched"]
        assert full >= 0.9
        assert idle.is_monotonic_increasing and idle.iloc[-1] > idle.iloc[0]
        assert idle.iloc[-1] >= 0.9 * full and idle.iloc[-1] - matched.iloc[-1] >= 0.3
        for control in ("Random-K", "Oldest-K"):
            assert (part[control] - matched).abs().max() <= 0.05, (b, control)
