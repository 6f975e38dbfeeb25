"""RULER's common-words and frequent-words extraction: its strings, its counts, its answers, and the
rows that answer them annotated."""

import re
from collections import Counter

from ruler import generate
from ruler.io import from_record

# transcribed from RULER's constants.py
CWE = ("Below is a numbered list of words. In these words, some appear more often than others. Memorize the ones that appear "
       "most often.\n", "Question: What are the 10 most common words in the above list?",
       " Answer: The top 10 words that appear most often in the list are:")
FWE = ("Read the following coded text and track the frequency of each coded word. Find the three most frequently appeared "
       "coded words. ", "Question: Do not provide any explanation. Please ignore the dots '....'. What are the three most "
       "frequently appeared words in the above coded text?",
       " Answer: According to the coded text above, the three most frequently appeared words are:")


def test_cwe_writes_rulers_text_counts_and_solved_example(tokenizer):
    sample = generate("cwe", 2048, 0, tokenizer)
    instruction, question, prefix = CWE
    (turn,) = sample.turns
    assert (turn.question, turn.answer_prefix) == (question, prefix) and sample.total_tokens <= 2048
    example, task = sample.prompt.split("\n" + instruction)
    assert example.startswith(instruction) and question + prefix + " 1. " in example  # the solved example, then the task
    words = re.findall(r"\d+\. (\S+)", task)
    counts = Counter(words)
    assert sorted(turn.outputs) == sorted(w for w, _ in counts.most_common(10))
    assert {counts[w] for w in turn.outputs} == {6} and set(counts.values()) == {6, 1}  # below 4096 tokens: 6 and 1 repeats
    assert len(sample.needles) == 60 and all(n.value in turn.outputs for n in sample.needles)


def test_fwe_writes_rulers_text_and_a_zipf_law(tokenizer):
    sample = generate("fwe", 2048, 0, tokenizer)
    instruction, question, prefix = FWE
    (turn,) = sample.turns
    assert sample.prompt.startswith(instruction) and (turn.question, turn.answer_prefix) == (question, prefix)
    counts = Counter(sample.prompt[len(instruction):].split())
    ranked = [w for w, _ in counts.most_common()]
    assert ranked[0] == "..." and ranked[1:4] == turn.outputs  # "..." is the most frequent, the answer the next three
    assert len(sample.needles) == sum(counts[w] for w in turn.outputs)


def test_cwe_and_fwe_records_load_back_with_their_questions(tokenizer):
    for task in ("cwe", "fwe"):
        sample = generate(task, 2048, 1, tokenizer)
        record = {k: v for k, v in sample.ruler_record().items() if k in ("index", "input", "outputs", "length", "answer_prefix")}
        loaded = from_record(record, task)
        assert (loaded.prompt, loaded.turns[0].question) == (sample.prompt, sample.turns[0].question)
