"""phase03 on a random tiny model: a killed sweep resumes with no lost or duplicate row."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[3]
SAMPLES, KS = 8, (8, 24)


def command(model_dir, out: Path) -> list[str]:
    return [
        sys.executable, "-m", "phases.phase03_repair.run", "experiment=phase03_repair_4q", f"model.path={model_dir}",
        "device=cpu", f"phase.num_samples={SAMPLES}", "phase.length=640", "phase.budgets=[80]", f"phase.ks=[{','.join(map(str, KS))}]",
        "phase.max_new_tokens=4", "retention.recent=16", f"phase.csv={out / 'summary.csv'}", f"phase.figure={out / 'frontier.png'}", "publish=true",
        f"hydra.run.dir={out / 'run'}",
    ]


def rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "run" / "rows.jsonl").read_text().splitlines()]


def cell(r):
    return (r["split"], r["index"], r["condition"], r["B"], r["K"])


def test_killed_sweep_resumes_without_lost_or_duplicate_rows(tiny_model_dir, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    done = subprocess.run(command(tiny_model_dir, clean), cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    conditions = json.loads((clean / "run" / "config.json").read_text())["repair"]["conditions"]
    assert len(conditions) >= 8
    total = SAMPLES * len(conditions) * len(KS)
    assert len(rows(clean)) == total

    proc = subprocess.Popen(command(tiny_model_dir, killed), cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rows_file = killed / "run" / "rows.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (rows_file.exists() and rows_file.stat().st_size > 0):
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = len(rows_file.read_text().splitlines())
    assert 0 < partial < total, "the sweep should have been killed mid-run"

    again = subprocess.run(command(tiny_model_dir, killed), cwd=ROOT, env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-2000:]
    resumed = rows(killed)
    assert len(resumed) == total and len({cell(r) for r in resumed}) == total
    ours = {cell(r): r["accuracy"] for r in resumed}
    assert ours == {cell(r): r["accuracy"] for r in rows(clean)}
    summary = pd.read_csv(killed / "summary.csv")
    assert set(summary["condition"]) >= {"Full", "Matched", "IdleKV", "Random-K"} and (killed / "frontier.png").exists()
