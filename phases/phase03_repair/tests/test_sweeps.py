"""Sweeps past one process: joblib and submitit_local multiruns, collect, kill and resume, wandb offline."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from idlekv.collect import collect

ROOT = Path(__file__).resolve().parents[3]
TIMING = [c for c in ("rule_s", "score_s", "select_s", "promote_s", "resume_s")]


def base(model_dir, out: Path) -> list[str]:
    return [
        "experiment=phase03_repair_4q", f"model.path={model_dir}", "device=cpu", "phase.num_samples=3", "phase.length=640",
        "phase.budgets=[80]", "phase.max_new_tokens=4", "retention.recent=16",
        f"phase.csv={out / 'summary.csv'}", f"phase.figure={out / 'frontier.png'}",
    ]


def phase03(args, **kw):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    env.pop("WANDB_MODE", None)
    return subprocess.run([sys.executable, "-m", "phases.phase03_repair.run", *args], cwd=ROOT, env=env, capture_output=True, text=True, **kw)


def comparable(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.drop(columns=TIMING).copy()
    frame["recall"] = frame["recall"].map(json.dumps)
    return frame.sort_values(["split", "index", "condition", "B", "K"]).reset_index(drop=True)[sorted(frame.columns)]


@pytest.fixture(scope="module")
def single(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    done = phase03([*base(tiny_model_dir, out), "phase.ks=[8,24]", f"hydra.run.dir={out / 'run'}", "publish=true"])
    assert done.returncode == 0, done.stderr[-3000:]
    return pd.DataFrame([json.loads(line) for line in (out / "run" / "rows.jsonl").read_text().splitlines()])


@pytest.mark.parametrize("launcher", [["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"], ["hydra/launcher=submitit_local"]])
def test_multirun_then_collect_equals_one_process(launcher, single, tiny_model_dir, tmp_path):
    sweep = tmp_path / "sweep"
    done = phase03(["-m", *launcher, *base(tiny_model_dir, tmp_path), "phase.ks=[8],[24]", f"hydra.sweep.dir={sweep}"])
    assert done.returncode == 0, done.stderr[-3000:]
    result = collect([sweep])
    assert result["jobs"] == 2 and not result["missing"] and result["duplicates_dropped"] == 0
    pd.testing.assert_frame_equal(comparable(result["frame"]), comparable(single))
    assert (tmp_path / "summary.csv").exists() and (tmp_path / "frontier.png").exists()


def test_collect_refuses_jobs_of_another_locked_config(tiny_model_dir, tmp_path):
    sweep = tmp_path / "sweep"
    for recent, ks in ((16, "[8]"), (12, "[24]")):
        done = phase03([*base(tiny_model_dir, tmp_path), f"retention.recent={recent}", f"phase.ks={ks}", "phase.num_samples=1",
                        f"hydra.run.dir={sweep / str(recent)}"])
        assert done.returncode == 0, done.stderr[-3000:]
    with pytest.raises(Exception, match="retention.recent: (16 -> 12|12 -> 16)"):
        collect([sweep])


def test_a_killed_sweep_relaunched_completes_the_grid(tiny_model_dir, tmp_path):
    sweep = tmp_path / "sweep"
    args = ["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *base(tiny_model_dir, tmp_path), "phase.num_samples=6",
            "phase.ks=[8],[24]", f"hydra.sweep.dir={sweep}"]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "phases.phase03_repair.run", *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 180
    while time.time() < deadline and not any(p.stat().st_size for p in sweep.rglob("rows.jsonl")):
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = collect([sweep], write=False)
    assert before["missing"], "the sweep should have been killed before finishing"
    done = phase03(args)
    assert done.returncode == 0, done.stderr[-3000:]
    after = collect([sweep])
    conditions = len(json.loads(next(sweep.rglob("config.json")).read_text())["repair"]["conditions"])
    assert not after["missing"] and after["rows"] == 2 * 6 * conditions and after["duplicates_dropped"] == 0


def test_wandb_offline_leaves_a_run_with_the_metrics(tiny_model_dir, tmp_path):
    done = phase03([*base(tiny_model_dir, tmp_path), "phase.ks=[8]", "phase.num_samples=1", "logger=wandb", f"hydra.run.dir={tmp_path / 'run'}"])
    assert done.returncode == 0, done.stderr[-3000:]
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    data = b"".join(p.read_bytes() for p in runs[0].glob("*.wandb"))
    assert b"accuracy" in data and b"active_bytes" in data


def test_the_default_run_never_imports_wandb(tiny_model_dir, tmp_path):
    script = (
        "import runpy, sys\n"
        f"sys.argv = ['run', *{base(tiny_model_dir, tmp_path) + ['phase.ks=[8]', 'phase.num_samples=1', f'hydra.run.dir={tmp_path / chr(114)}']!r}]\n"
        "try:\n    runpy.run_module('phases.phase03_repair.run', run_name='__main__')\nexcept SystemExit:\n    pass\n"
        "print('WANDB_IMPORTED' if 'wandb' in sys.modules else 'NO_WANDB')\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True)
    assert "NO_WANDB" in done.stdout, done.stdout[-2000:] + done.stderr[-2000:]
