import json
import signal
import subprocess
import sys
import textwrap

import pytest

from idlekv.results import ConfigMismatchError, DuplicateCellError, ResultStore

KEYS = ("sample", "condition")


def test_rows_survive_reopen_and_duplicates_are_refused(tmp_path):
    store = ResultStore(tmp_path, KEYS, config={"k": 1})
    store.append({"sample": 0, "condition": "full", "acc": 1.0})
    with pytest.raises(DuplicateCellError):
        store.append({"sample": 0, "condition": "full", "acc": 0.5})
    store.close()
    again = ResultStore(tmp_path, KEYS, config={"k": 1})
    assert again.rows == [{"sample": 0, "condition": "full", "acc": 1.0}]
    assert again.is_done({"sample": 0, "condition": "full"}) and not again.is_done({"sample": 1, "condition": "full"})


def test_another_config_is_refused(tmp_path):
    with ResultStore(tmp_path, KEYS, config={"model": {"name": "a"}, "k": 1}) as store:
        store.append({"sample": 0, "condition": "full"})
    with pytest.raises(ConfigMismatchError, match="model.name: 'a' -> 'b'"):
        ResultStore(tmp_path, KEYS, config={"model": {"name": "b"}, "k": 1})


WRITER = textwrap.dedent(
    """
    import json, os, signal, sys
    from idlekv.results import ResultStore
    store = ResultStore(sys.argv[1], ("sample", "condition"), config={"grid": 20})
    die_after = int(sys.argv[2])
    written = 0
    for sample in range(10):
        for condition in ("full", "idlekv"):
            cell = {"sample": sample, "condition": condition}
            if store.is_done(cell):
                continue
            if written == die_after:
                # die in the middle of writing a row: half a line reaches the file
                line = json.dumps({**cell, "acc": 0.5})
                with open(os.path.join(sys.argv[1], "rows.jsonl"), "a") as f:
                    f.write(line[: len(line) // 2])
                os.kill(os.getpid(), signal.SIGKILL)
            store.append({**cell, "acc": sample / 10})
            written += 1
    """
)


def test_killed_writer_resumes_without_lost_or_duplicate_rows(tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    run_dir = tmp_path / "run"
    first = subprocess.run([sys.executable, str(script), str(run_dir), "7"], capture_output=True)
    assert first.returncode == -signal.SIGKILL
    assert not (run_dir / "rows.jsonl").read_bytes().endswith(b"\n")  # a torn row was left behind
    second = subprocess.run([sys.executable, str(script), str(run_dir), "-1"], capture_output=True, text=True)
    assert second.returncode == 0, second.stderr
    rows = [json.loads(line) for line in (run_dir / "rows.jsonl").read_text().splitlines()]
    cells = [(r["sample"], r["condition"]) for r in rows]
    assert len(cells) == 20 and len(set(cells)) == 20
    assert all(r["acc"] == r["sample"] / 10 for r in rows)


def test_csv_export(tmp_path):
    store = ResultStore(tmp_path / "run", KEYS)
    store.extend({"sample": i, "condition": "full", "acc": i} for i in range(3))
    path = store.write_csv(tmp_path / "out" / "rows.csv")
    assert path.read_text().splitlines()[0].split(",") == ["acc", "condition", "sample"]
