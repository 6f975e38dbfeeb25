"""JSONL files with RULER's field names (`index`, `input`, `outputs`, `length`,
`answer_prefix`) plus ours; also reads JSONL written by RULER's own scripts.

A RULER record's `input` is the prompt with its question at the end (and, for a chat template
RULER's prepare.py baked in, the template's head before and its tail after). Loading splits it
at the last question marker of RULER's task templates (NIAH singular and plural, variable
tracking, common and frequent words, QA), also where RULER removed newlines
(`--remove_newline_tab`): the prompt is what is prefilled, the question is turn 1. A record
whose question cannot be found is refused.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path

from ruler.sample import Sample, Turn

# Where each RULER task template's question starts (scripts/data/synthetic/constants.py)
QUESTION_MARKERS = (
    "\nWhat are all the special magic",  # niah, plural
    "\nWhat is the special magic",  # niah, singular (one value asked)
    "\nQuestion: Find all variables that are assigned the value",  # variable_tracking
    "\nQuestion: What are the 10 most common words",  # common_words_extraction
    "\nQuestion: Do not provide any explanation.",  # freq_words_extraction
    "\n\nAnswer the question based on the given documents.",  # qa: its instruction again, then the question
)


class SplitError(ValueError):
    pass


def split_question(text: str) -> tuple[str, str]:
    """(prompt, question) of a RULER input: cut before the last question marker found."""
    cuts = []
    for marker in QUESTION_MARKERS:
        head = len(marker) - len(marker.lstrip("\n"))
        for variant in (marker, " " + marker.lstrip("\n")):  # newlines removed: one space instead
            at = text.rfind(variant)
            if at >= 0:
                cuts.append(at + (head if variant == marker else 1))
    if not cuts:
        raise SplitError("its input holds none of RULER's question markers (" + "; ".join(m.strip() for m in QUESTION_MARKERS)
                         + "), so its question cannot be separated from the prompt that is compressed")
    cut = max(cuts)
    return text[:cut], text[cut:]


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
    prompt, question = split_question(record["input"])
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
            try:
                yield from_record(record, task or path.stem)
            except SplitError as err:
                raise SplitError(f"{path}:{number}: {err}") from None
