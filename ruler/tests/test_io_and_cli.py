import json
import subprocess
import sys

from ruler import generate
from ruler.io import read_jsonl, write_jsonl


def test_export_import_round_trip(tmp_path, tokenizer):
    samples = [generate("mq_niah_4q", 1024, i, tokenizer, split="clean", recency_window=128) for i in range(3)]
    path = tmp_path / "s.jsonl"
    assert write_jsonl(samples, path) == 3
    record = json.loads(path.read_text().splitlines()[0])
    assert {"index", "input", "outputs", "length", "answer_prefix"} <= set(record)
    assert record["input"] == samples[0].prompt + samples[0].turns[0].question
    assert [s.to_dict() for s in read_jsonl(path)] == [s.to_dict() for s in samples]


def test_a_hand_written_ruler_line_loads(tmp_path):
    line = {
        "index": 4,
        "input": "Some special magic numbers are hidden within the following text. Make sure to memorize it. "
        "I will quiz you about the numbers afterwards.\nThe grass is green. One of the special magic numbers for "
        "tired-rose is: 4520481.\nWhat are all the special magic numbers for tired-rose mentioned in the provided text?",
        "outputs": ["4520481"],
        "length": 61,
        "length_w_model_temp": 80,
        "answer_prefix": " The special magic numbers for tired-rose mentioned in the provided text are",
    }
    path = tmp_path / "niah_single_1.jsonl"
    path.write_text(json.dumps(line) + "\n")
    (s,) = list(read_jsonl(path))
    assert s.task == "niah_single_1" and s.index == 4 and s.turns[0].outputs == ["4520481"]
    assert s.prompt.endswith("4520481.\n") and s.turns[0].question.startswith("What are all")
    assert s.prompt + s.turns[0].question == line["input"]


def test_cli_writes_a_task(tmp_path):
    out = tmp_path / "mq.jsonl"
    result = subprocess.run(
        [sys.executable, "-m", "ruler", "--task", "mq_niah_2q", "--length", "768", "--num-samples", "4", "--out", str(out), "--set", "split=clean", "recency_window=64"],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "wrote 4 samples" in result.stdout
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 4 and all(r["length"] <= 768 for r in rows) and rows[0]["options"]["split"] == "clean"


def test_cli_names_a_bad_task(tmp_path):
    result = subprocess.run([sys.executable, "-m", "ruler", "--task", "nope", "--length", "512", "--out", str(tmp_path / "x.jsonl")], capture_output=True, text=True)
    assert result.returncode != 0 and "unknown task" in result.stderr


def test_a_failed_generation_leaves_no_file_and_no_tmp(tmp_path):
    import pytest

    from ruler.io import write_jsonl

    def samples():
        raise RuntimeError("the generator failed before its first sample")
        yield  # pragma: no cover

    out = tmp_path / "out.jsonl"
    with pytest.raises(RuntimeError):
        write_jsonl(samples(), out)
    assert list(tmp_path.iterdir()) == []
