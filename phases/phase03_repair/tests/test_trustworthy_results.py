"""Each way a hostile tester made the pipeline publish wrong numbers, replayed: none may succeed."""

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from idlekv.results import ConfigMismatchError, CorruptRowError, ResultStore, RunLockedError
from phases.publish import PublishError, publish

ROOT = Path(__file__).resolve().parents[3]
KEYS = ("sample", "condition")
TRACKED = ("saved_results", "paper")


def phase03(args, **kw):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "phases.phase03_repair.run", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, **kw)


def tiny(model_dir, run_dir: Path, *extra) -> list[str]:
    return ["experiment=phase03_repair_4q", f"model.path={model_dir}", "device=cpu", "phase.num_samples=2", "phase.length=640",
            "phase.budgets=[80]", "phase.ks=[8]", "phase.max_new_tokens=3", "retention.recent=16", f"hydra.run.dir={run_dir}", *extra]


def tracked_digest() -> dict:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for d in TRACKED for p in sorted((ROOT / d).rglob("*")) if p.is_file()}


# --- duplicates never counted ------------------------------------------------------------------
def test_a_duplicated_line_is_dropped_with_a_report(tmp_path, capsys):
    with ResultStore(tmp_path, KEYS, config={"k": 1}) as store:
        store.extend([{"sample": 0, "condition": "full", "acc": 1.0}, {"sample": 1, "condition": "full", "acc": 0.0}])
    rows = tmp_path / "rows.jsonl"
    rows.write_text(rows.read_text() + rows.read_text().splitlines()[0] + "\n")
    again = ResultStore(tmp_path, KEYS, config={"k": 1}, read_only=True)
    assert len(again) == 2 and again.duplicates_dropped == 1
    assert "rows.jsonl:3 repeats the cell of line 1" in capsys.readouterr().err


HOLDER = textwrap.dedent("""
    import sys, time
    from idlekv.results import ResultStore
    store = ResultStore(sys.argv[1], ("sample",), config={"k": 1})
    print("holding", flush=True)
    time.sleep(60)
""")


def test_a_second_writer_of_one_run_is_refused_with_the_holders_pid(tmp_path):
    script = tmp_path / "holder.py"
    script.write_text(HOLDER)
    holder = subprocess.Popen([sys.executable, str(script), str(tmp_path / "run")], stdout=subprocess.PIPE, text=True,
                              env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        assert holder.stdout.readline().strip() == "holding"
        with pytest.raises(RunLockedError, match=f"pid {holder.pid}"):
            ResultStore(tmp_path / "run", ("sample",), config={"k": 1})
    finally:
        holder.kill()
        holder.wait()
    ResultStore(tmp_path / "run", ("sample",), config={"k": 1}).close()  # the lock died with its holder


def test_two_concurrent_runs_of_one_config_the_second_refused(tiny_model_dir, tmp_path):
    args = tiny(tiny_model_dir, tmp_path / "run", "phase.num_samples=500")
    first = subprocess.Popen([sys.executable, "-m", "phases.phase03_repair.run", *args], cwd=ROOT, stderr=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, env=dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1"))
    lock = tmp_path / "run" / ".lock"
    try:
        for _ in range(1200):
            if lock.exists() and lock.read_text().strip() == str(first.pid):
                break
            subprocess.run(["sleep", "0.05"])
        second = phase03(args)
        assert first.poll() is None, "the first run ended before the second started"
    finally:
        first.kill()
        first.wait()
    assert second.returncode == 2 and f"pid {first.pid}" in second.stderr and "Traceback" not in second.stderr
    cells = [json.loads(line) for line in (tmp_path / "run" / "rows.jsonl").read_text().splitlines() if line.endswith("}")]
    assert len(cells) == len({(r["index"], r["condition"], r["B"], r["K"]) for r in cells})


# --- invalid grids refused before any model work, one line each ----------------------------------
def test_invalid_grids_are_refused_before_the_model_loads(tiny_model_dir, tmp_path):
    done = phase03(tiny(tiny_model_dir, tmp_path / "run", "phase.length=100000", "phase.ks=[-4]", "phase.num_samples=0",
                        "phase.max_new_tokens=0", "repair.conditions=[{name:A,kind:full},{name:A,kind:full},"
                        "{name:B,kind:repair,signal:exact,selector:topk,granularity:nope}]"))
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert lines[0].startswith("error: phase.length=100000: allowed: an integer from 1 to 2048")
    for expected in ("phase.ks=-4", "phase.num_samples=0", "phase.max_new_tokens=0", "'A' is named 2 times",
                     "repair.conditions[B]: granularity 'nope'"):
        assert sum(expected in line for line in lines) == 1, (expected, lines)
    assert "Traceback" not in done.stderr and "Loading weights" not in done.stderr + done.stdout
    assert not (tmp_path / "run" / "rows.jsonl").exists()


def test_debug_keeps_the_traceback(tiny_model_dir, tmp_path):
    done = phase03(tiny(tiny_model_dir, tmp_path / "run", "phase.ks=[-4]", "debug=true"))
    assert done.returncode != 0 and "GridError" in done.stderr


# --- the config lock has no holes ---------------------------------------------------------------
def _store_with_rows(path: Path) -> None:
    with ResultStore(path, KEYS, config={"max_new_tokens": 32}, environment={"run": 1}) as store:
        store.append({"sample": 0, "condition": "full", "acc": 1.0})


def test_rows_without_their_config_are_refused(tmp_path):
    _store_with_rows(tmp_path)
    (tmp_path / "config.json").unlink()
    with pytest.raises(ConfigMismatchError, match="holds 1 rows but no config.json.*phase.name="):
        ResultStore(tmp_path, KEYS, config={"max_new_tokens": 16})


def test_a_truncated_config_is_named_with_its_line(tmp_path):
    _store_with_rows(tmp_path)
    (tmp_path / "config.json").write_text('{\n  "max_new_tokens": ')
    with pytest.raises(ConfigMismatchError, match=r"config.json:2 is not valid JSON"):
        ResultStore(tmp_path, KEYS, config={"max_new_tokens": 32})


def test_a_row_without_its_key_fields_is_named_with_its_line(tmp_path):
    _store_with_rows(tmp_path)
    with open(tmp_path / "rows.jsonl", "a") as f:
        f.write(json.dumps({"acc": 0.5}) + "\n")
    with pytest.raises(CorruptRowError, match=r"rows.jsonl:2 lacks the key fields \['sample', 'condition'\]"):
        ResultStore(tmp_path, KEYS, config={"max_new_tokens": 32})


def test_every_resume_appends_its_environment(tmp_path):
    _store_with_rows(tmp_path)
    ResultStore(tmp_path, KEYS, config={"max_new_tokens": 32}, environment={"run": 2}).close()
    assert [json.loads(line)["run"] for line in (tmp_path / "environment.jsonl").read_text().splitlines()] == [1, 2]


def test_a_run_that_wrote_no_row_locks_nothing(tmp_path):
    ResultStore(tmp_path, KEYS, config={"max_new_tokens": 32}).close()  # failed before its first row
    with ResultStore(tmp_path, KEYS, config={"max_new_tokens": 16}) as store:  # a changed config starts cleanly
        store.append({"sample": 0, "condition": "full"})
    with pytest.raises(ConfigMismatchError, match="phase.name=.*or remove"):
        ResultStore(tmp_path, KEYS, config={"max_new_tokens": 8})


# --- nothing tracked changes unless publishing is asked for ----------------------------------------
def test_runs_never_touch_tracked_files_and_publishing_is_explicit(tiny_model_dir, tmp_path):
    before = tracked_digest()
    outputs = [f"phase.csv={tmp_path / 'published.csv'}", f"phase.figure={tmp_path / 'published.png'}"]
    done = phase03(tiny(tiny_model_dir, tmp_path / "run", *outputs))
    assert done.returncode == 0, done.stderr[-2000:]
    assert tracked_digest() == before
    assert (tmp_path / "run" / "summary.csv").exists() and (tmp_path / "run" / "figure.png").exists()
    assert not (tmp_path / "published.csv").exists()
    paths = publish(tmp_path / "run")
    assert [p.name for p in paths] == ["published.csv", "published_pairs.csv", "published_rows.csv.gz", "published.png"]
    assert pd.read_csv(tmp_path / "published.csv").equals(pd.read_csv(tmp_path / "run" / "summary.csv"))
    assert not list(tmp_path.glob(".*tmp*"))  # written through a temporary file renamed into place


def test_a_partial_grid_is_published_only_when_forced(tmp_path):
    config = {"phase": {"module": "phases.phase03_repair.run", "name": "p", "task": "t", "num_keys": 4, "base_seed": 7,
                        "splits": {"clean": {}},
                        "num_samples": 2, "budgets": [8], "ks": [1], "csv": str(tmp_path / "p.csv"),
                        "figure": str(tmp_path / "p.png")},
              "repair": {"conditions": [{"name": "Full"}]}}
    with ResultStore(tmp_path / "run", ("task", "split", "index", "condition", "B", "K"), config=config) as store:
        store.append({"task": "t", "split": "clean", "index": 0, "condition": "Full", "B": 8, "K": 1, "accuracy": 1.0,
                      "turn1_accuracy": 1.0, "needle_rows_active": 1.0, "active_rows": 10, "active_bytes": 1, "warm_bytes": 0,
                      "context_tokens": 9, "deployable": True, "score_s": 0.0, "select_s": 0.0, "promote_s": 0.0,
                      "resume_s": 0.0})
    with pytest.raises(PublishError, match="1 cells of the grid have no row yet"):
        publish(tmp_path / "run")
    assert not (tmp_path / "p.csv").exists()
    publish(tmp_path / "run", force=True)
    assert (tmp_path / "p.csv").exists()


def test_a_multirun_never_publishes(tiny_model_dir, tmp_path):
    done = phase03(["-m", *tiny(tiny_model_dir, tmp_path / "run", "publish=true"), f"hydra.sweep.dir={tmp_path / 'sweep'}"])
    assert done.returncode == 2 and "multirun jobs never publish" in done.stderr
