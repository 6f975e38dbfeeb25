"""JSONL files with RULER's field names (`index`, `input`, `outputs`, `length`,
`answer_prefix`) plus ours; also reads JSONL written by RULER's own scripts."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path

from ruler.sample import Sample, Turn

QUESTION_MARKER = "\nWhat are all the special magic"


def write_jsonl(samples: Iterable[Sample], path: str | Path) -> int:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    count = 0
    try:  # all or nothing: a failed generation leaves neither a partial file nor its .tmp
        with open(tmp, "w", encoding="utf-8") as f:
            for sample in samples:
                f.write(json.dumps(sample.ruler_record(), ensure_ascii=False) + "\n")
                count += 1
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return count


def from_record(record: dict, task: str = "ruler") -> Sample:
    """A sample from one JSONL record: ours (full round trip) or RULER's (no annotations)."""
    if "task_name" in record:
        return Sample.from_dict({k: v for k, v in record.items() if k not in ("input", "outputs", "length", "answer_prefix", "index")} | {"index": record["index"]})
    missing = [f for f in ("input", "outputs") if f not in record]
    if missing:
        raise ValueError(f"record lacks RULER fields {missing}")
    text = record["input"]
    # RULER puts the question after the context; keep it as turn 1 when it can be found.
    cut = text.rfind(QUESTION_MARKER)
    prompt, question = (text[: cut + 1], text[cut + 1 :]) if cut >= 0 else (text, "")
    outputs = [str(o) for o in record["outputs"]]
    turn = Turn(question=question, answer_prefix=record.get("answer_prefix", ""), keys=[], outputs=outputs)
    return Sample(task=task, length=int(record.get("length", 0)), index=int(record.get("index", 0)), seed=-1,
                  prompt=prompt, turns=[turn], needles=[], total_tokens=record.get("length"))


def read_jsonl(path: str | Path, task: str | None = None) -> Iterator[Sample]:
    path = Path(path)
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{number}: not JSON ({err})") from None
            yield from_record(record, task or path.stem)
