import json
import subprocess
import sys

import pytest

from ruler import generate
from ruler.io import from_record, read_jsonl, write_jsonl


def test_export_import_round_trip(tmp_path, tokenizer):
    samples = [generate("mq_niah_4q", 1024, i, tokenizer, split="clean", recency_window=128) for i in range(3)]
    path = tmp_path / "s.jsonl"
    assert write_jsonl(samples, path) == 3
    record = json.loads(path.read_text().splitlines()[0])
    assert {"index", "input", "outputs", "length", "answer_prefix"} <= set(record)
    assert record["input"] == samples[0].prompt + samples[0].turns[0].question
    assert [s.to_dict() for s in read_jsonl(path)] == [s.to_dict() for s in samples]


NIAH_HEAD = ("Some special magic numbers are hidden within the following text. Make sure to memorize it. I will quiz you "
             "about the numbers afterwards.\n")
# One line per RULER task family, transcribed by hand in the form RULER's scripts write (input, outputs,
# answer_prefix): what the prompt ends with, and what turn 1's question starts with.
RULER_LINES = {
    "niah_single_1": ("A special magic number is hidden within the following text. Make sure to memorize it. I will quiz you about "
                      "the number afterwards.\nThe grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.\n"
                      "One of the special magic numbers for tired-rose is: 4520481.\nWhat is the special magic number for tired-rose "
                      "mentioned in the provided text?", ["4520481"], " The special magic number for tired-rose mentioned in the provided text is",
                      "What is the special magic number"),
    "niah_multiquery": (NIAH_HEAD + "One of the special magic numbers for a-b is: 1111111. One of the special magic numbers for c-d is: "
                        "2222222.\nWhat are all the special magic numbers for a-b, and c-d mentioned in the provided text?",
                        ["1111111", "2222222"], " The special magic numbers for a-b, and c-d mentioned in the provided text are",
                        "What are all the special magic"),
    "vt": ("Memorize and track the chain(s) of variable assignment hidden in the following text.\n\nThe grass is green.\n"
           "VAR QPWOE = 12345\nVAR ZXCVB = VAR QPWOE \nQuestion: Find all variables that are assigned the value 12345 in the text "
           "above.", ["QPWOE", "ZXCVB"], " Answer: According to the chain(s) of variable assignment in the text above, 2 variables "
           "are assigned the value 12345, they are: ", "Question: Find all variables"),
    "cwe": ("Below is a numbered list of words. In these words, some appear more often than others. Memorize the ones that appear "
            "most often.\n1. apple 2. pear 3. apple\nQuestion: What are the 10 most common words in the above list?", ["apple"],
            " Answer: The top 10 words that appear most often in the list are:", "Question: What are the 10 most common words"),
    "fwe": ("Read the following coded text and track the frequency of each coded word. Find the three most frequently appeared "
            "coded words. ... abcdef ... ghijkl abcdef\nQuestion: Do not provide any explanation. Please ignore the dots '....'. "
            "What are the three most frequently appeared words in the above coded text?", ["abcdef"],
            " Answer: According to the coded text above, the three most frequently appeared words are:", "Question: Do not provide"),
    "qa_1": ("Answer the question based on the given documents. Only give me the answer and do not output any other words.\n\n"
             "The following are given documents.\n\nDocument 1:\nParis is in France.\n\nAnswer the question based on the given "
             "documents. Only give me the answer and do not output any other words.\n\nQuestion: Where is Paris?", ["France"],
             " Answer:", "Answer the question based on the given documents. Only give me the answer and do not output any other words.\n\nQuestion"),
    # niah_single_2 as prepare.py bakes in the meta-llama3 template: its head before, its tail after the question
    "niah_single_2": ("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nA special magic number is hidden within the "
                      "following text. Make sure to memorize it. I will quiz you about the number afterwards.\nAn essay. One of the "
                      "special magic numbers for calm-lake is: 7654321. More essay.\nWhat is the special magic number for calm-lake "
                      "mentioned in the provided text?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n", ["7654321"],
                      " The special magic number for calm-lake mentioned in the provided text is", "What is the special magic number"),
    # --remove_newline_tab: one line, the question after a space
    "niah_multikey_1": ("A special magic number is hidden within the following text. Make sure to memorize it. I will quiz you "
                        "about the number afterwards. One of the special magic numbers for x-y is: 3333333. What is the special "
                        "magic number for x-y mentioned in the provided text?", ["3333333"],
                        " The special magic number for x-y mentioned in the provided text is", "What is the special magic number"),
}


@pytest.mark.parametrize("task", sorted(RULER_LINES))
def test_a_ruler_line_of_every_task_loads_with_its_question_split_out(tmp_path, task):
    text, outputs, prefix, question_start = RULER_LINES[task]
    line = {"index": 4, "input": text, "outputs": outputs, "length": 61, "length_w_model_temp": 80, "answer_prefix": prefix}
    path = tmp_path / f"{task}.jsonl"
    path.write_text(json.dumps(line) + "\n")
    (s,) = list(read_jsonl(path))
    assert s.task == task and s.index == 4 and s.turns[0].outputs == outputs and s.turns[0].answer_prefix == prefix
    assert s.turns[0].question.startswith(question_start) and question_start not in s.prompt
    assert s.prompt + s.turns[0].question == text


def test_a_line_without_a_question_is_refused(tmp_path):
    path = tmp_path / "odd.jsonl"
    path.write_text(json.dumps({"input": "Some text with no question.", "outputs": ["1"]}) + "\n")
    with pytest.raises(ValueError, match="odd.jsonl:1: .*question markers"):
        list(read_jsonl(path))


def test_generated_niah_samples_load_back_from_their_ruler_fields(tmp_path, tokenizer):
    for task in ("niah_single_1", "niah_multiquery", "niah_multikey_3"):
        sample = generate(task, 1024, 0, tokenizer)
        record = {k: v for k, v in sample.ruler_record().items() if k in ("index", "input", "outputs", "length", "answer_prefix")}
        loaded = from_record(record, task)
        assert (loaded.prompt, loaded.turns[0].question) == (sample.prompt, sample.turns[0].question)


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
