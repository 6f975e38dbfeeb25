"""RULER's exact text: each NIAH task's instruction, question and answer prefix equal the strings
RULER's generator writes for the same keys (transcribed by hand from its constants.py template and
niah.py's singular rewrite), and the noise haystack is laid out as RULER lays it out."""

import pytest

from ruler import generate
from ruler.tasks import get_task
from ruler.templates import NOISE

# RULER's NIAH template, as its generator fills it, in the plural and in the singular
# (num_needle_q x num_needle_v == 1: "Some" -> "A", "are all" -> "is", "are" -> "is", "numbers" -> "number").
PLURAL = ("Some special magic {t}s are hidden within the following text. Make sure to memorize it. I will quiz you about the {t}s afterwards.\n",
          "What are all the special magic {t}s for {q} mentioned in the provided text?",
          " The special magic {t}s for {q} mentioned in the provided text are")
SINGULAR = ("A special magic {t} is hidden within the following text. Make sure to memorize it. I will quiz you about the {t} afterwards.\n",
            "What is the special magic {t} for {q} mentioned in the provided text?",
            " The special magic {t} for {q} mentioned in the provided text is")
# RULER's eight NIAH tasks: which wording and value type each asks in
EXPECTED = {
    "niah_single_1": (SINGULAR, "number"), "niah_single_2": (SINGULAR, "number"), "niah_single_3": (SINGULAR, "uuid"),
    "niah_multikey_1": (SINGULAR, "number"), "niah_multikey_2": (SINGULAR, "number"), "niah_multikey_3": (SINGULAR, "uuid"),
    "niah_multivalue": (PLURAL, "number"), "niah_multiquery": (PLURAL, "number"),
}


def query_of(keys: list[str]) -> str:
    return keys[0] if len(keys) == 1 else ", ".join(keys[:-1]) + ", and " + keys[-1]


@pytest.mark.parametrize("task", sorted(EXPECTED))
def test_each_niah_task_writes_rulers_instruction_question_and_answer_prefix(task, tokenizer):
    (instruction, question, prefix), t = EXPECTED[task]
    sample = generate(task, 1024, 0, tokenizer)
    (turn,) = sample.turns
    q = query_of(turn.keys)
    assert sample.prompt.startswith(instruction.format(t=t))
    assert turn.question == question.format(t=t, q=q)
    assert turn.answer_prefix == prefix.format(t=t, q=q)
    # RULER's input is the instruction, the context, a newline and the question; the needles keep the plural
    assert sample.ruler_record()["input"] == sample.prompt + turn.question and sample.prompt.endswith("\n")
    assert all(f"special magic {t}s for" in n.text for n in sample.needles)


def test_the_noise_haystack_is_rulers_block_per_line_with_each_needle_on_its_own_line(tokenizer):
    sample = generate("niah_single_1", 1024, 3, tokenizer)
    lines = sample.prompt.split("\n")[1:-1]  # between the instruction and the question
    needles = {n.text for n in sample.needles}
    assert set(lines) == {NOISE} | needles and len(lines) > 5


def test_the_embedded_models_format_is_kept_as_named_options(tokenizer):
    spec = get_task("mq_niah_4q_embedded")
    assert (spec.wording, spec.noise_layout, spec.answer_tokens) == ("plural", "sentences", 24)
    sample = generate("niah_single_1", 1024, 3, tokenizer, wording="plural", noise_layout="sentences")
    assert sample.turns[0].question.startswith("What are all the special magic numbers for")
    assert "The grass is green. The sky is blue." in sample.prompt and NOISE + "\n" not in sample.prompt


def test_rulers_length_rule_reserves_128_answer_tokens(tokenizer):
    assert get_task("niah_single_1").answer_tokens == 128  # RULER's tokens_to_generate for NIAH
    sample = generate("niah_single_1", 1024, 0, tokenizer)
    assert sample.total_tokens <= 1024 and sample.total_tokens - sample.prompt_tokens >= 128
    assert get_task("mq_niah_4q").answer_tokens == 64  # the reference's split-query benchmark keeps its own
