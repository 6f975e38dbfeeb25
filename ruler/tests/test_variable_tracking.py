"""RULER's variable tracking: the strings its generator writes, its chains, its solved example, and
the split-turn version whose needles are the assignment lines each turn's chain needs."""

import re

import pytest

from ruler import generate
from ruler.io import from_record
from ruler.templates import NOISE

# transcribed from RULER's constants.py (variable_tracking), filled for a value and 5 names
QUESTION = "Question: Find all variables that are assigned the value {v} in the text above."
PREFIX = " Answer: According to the chain(s) of variable assignment in the text above, 5 variables are assigned the value {v}, they are: "
INSTRUCTION = "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n"


def chain_of(prompt: str, value: str, letters: int = 5, name: str | None = None) -> list[str]:
    """Follow the assignments from `value`: the names (`letters` upper-case letters, or the `name` pattern) that hold it, in order."""
    names, target = [], f"= {value}"
    lines = prompt.split("\n")
    name = name or f"[A-Z]{{{letters}}}"
    while True:
        hit = [ln for ln in lines if re.fullmatch(rf"VAR {name} {re.escape(target)}", ln.rstrip())]
        if not hit:
            return names
        names.append(hit[0].split()[1])
        target = f"= VAR {names[-1]}"


@pytest.mark.parametrize("length", [1024, 2048])
def test_vt_writes_rulers_question_prefix_and_chains(tokenizer, length):
    sample = generate("vt", length, 0, tokenizer)
    (turn,) = sample.turns
    value = re.search(r"value (\d{5}) in", turn.question).group(1)
    assert turn.question == QUESTION.format(v=value) and turn.answer_prefix == PREFIX.format(v=value)
    assert turn.outputs == chain_of(sample.prompt, value) and len(turn.outputs) == 5
    task = sample.prompt[sample.prompt.rindex(INSTRUCTION) + len(INSTRUCTION):]
    lines = task.rstrip("\n").split("\n")
    assert set(lines) - {NOISE} == {n.text for n in sample.needles}  # one item per line: noise blocks and assignments
    assert f"VAR {turn.outputs[0]} = {value}" in lines and f"VAR {turn.outputs[1]} = VAR {turn.outputs[0]} " in lines
    assert sample.total_tokens <= length


def test_vt_opens_with_rulers_solved_example(tokenizer):
    sample = generate("vt", 2048, 1, tokenizer)
    example, rest = sample.prompt.split("\n\n" + INSTRUCTION, 1)
    assert example.startswith(INSTRUCTION)
    value = re.search(r"assigned the value (\d{5}), they are: ", example).group(1)
    answer = example.rsplit("they are:  ", 1)[1].split()
    assert answer == chain_of(example, value, letters=3) and len(answer) == 5  # 3-letter names, its own answer after two spaces
    assert generate("vt", 2048, 1, tokenizer, example=False).prompt.startswith(INSTRUCTION)


def test_split_vt_asks_one_chain_per_turn_and_annotates_its_lines(tokenizer):
    sample = generate("vt_split", 2048, 2, tokenizer)
    assert len(sample.turns) == 2 and len(sample.needles) == 10
    for t, turn in enumerate(sample.turns):
        mine = [n for n in sample.needles if n.turns == [t]]
        assert sorted(n.key for n in mine) == sorted(turn.outputs)
        for n in mine:  # the annotated span is the assignment line, in tokens of the prompt
            assert sample.prompt[n.start:n.end] == n.text and n.token_start < n.token_end <= sample.prompt_tokens
    assert set(sample.turns[0].outputs).isdisjoint(sample.turns[1].outputs)


def test_a_vt_record_loads_back_with_its_question(tokenizer):
    sample = generate("vt", 1024, 0, tokenizer)
    record = {k: v for k, v in sample.ruler_record().items() if k in ("index", "input", "outputs", "length", "answer_prefix")}
    loaded = from_record(record, "vt")
    assert (loaded.prompt, loaded.turns[0].question) == (sample.prompt, sample.turns[0].question)


def test_a_clean_split_keeps_the_later_chain_out_of_the_recent_window(tokenizer):
    sample = generate("vt_split", 2048, 4, tokenizer, split="clean", recency_window=128)
    later = [n for n in sample.needles if n.turns == [1]]
    assert len(later) == 5 and max(n.token_end for n in later) <= sample.prompt_tokens - 128
    with pytest.raises(ValueError, match="recency_window"):
        generate("vt_split", 2048, 4, tokenizer, split="clean")


def test_the_embedded_version_names_variables_with_one_token_words_and_keeps_rulers_text(tokenizer):
    from idlekv.embedded.tokenizer import build_tokenizer
    from ruler.keys import word_list

    embedded = build_tokenizer()
    sample = generate("vt_split_embedded", 1024, 3, embedded)
    assert sample.prompt.startswith(INSTRUCTION) and sample.total_tokens <= 1024  # no solved example
    for turn in sample.turns:
        value = re.search(r"value (\d{5}) in", turn.question).group(1)
        assert turn.question == QUESTION.format(v=value) and turn.answer_prefix == PREFIX.format(v=value)
        assert turn.outputs == chain_of(sample.prompt, value, name="[a-z]+") and len(turn.outputs) == 5
        assert all(n in word_list() and len(embedded.tokenize(" " + n)) == 1 for n in turn.outputs)
    names = sample.turns[0].outputs + sample.turns[1].outputs
    assert not any(a in b for a in names for b in names if a != b)  # a name's string match cannot hit another
    assert generate("vt_split", 2048, 2, tokenizer).prompt == generate("vt_split", 2048, 2, tokenizer, names="letters").prompt
    with pytest.raises(ValueError, match="names"):
        generate("vt_split", 2048, 2, tokenizer, names="digits")
    single = generate("vt_embedded", 1024, 3, embedded)  # one question about one of two chains: nothing to lean on
    (turn,) = single.turns
    assert len(single.needles) == 10 and sorted(n.key for n in single.needles if n.turns == [0]) == sorted(turn.outputs)
