
import pytest

from ruler import TASKS, generate, partitions
from ruler.generation import LengthError
from ruler.render import encode, render
from ruler.seeding import sample_seed


def prompt_ids(sample, tok):
    return encode(tok, render(sample, tok).prompt_text)


@pytest.mark.parametrize("task", sorted(TASKS))
def test_spans_decode_to_the_needles_and_values_appear_once(task, tokenizer):
    for index in range(3):
        s = generate(task, 1024, index, tokenizer)
        ids = prompt_ids(s, tokenizer)
        assert len(ids) == s.prompt_tokens
        for n in s.needles:
            assert s.prompt[n.start : n.end] == n.text and s.prompt[n.value_start : n.value_end] == n.value
            assert tokenizer.decode(ids[n.token_start : n.token_end]).strip() == n.text
            assert tokenizer.decode(ids[n.value_token_start : n.value_token_end]).strip() == n.value
            assert s.prompt.count(n.value) == 1
        asked = {v for t in s.turns for v in t.outputs}
        assert asked == {n.value for n in s.needles if n.turns}


@pytest.mark.parametrize("length", [512, 1024, 2048, 4096, 8192, 16384, 32768])
@pytest.mark.parametrize("task", ["niah_single_1", "niah_multikey_2", "mq_niah_4q", "niah_multikey_3"])
def test_fitted_length_is_within_budget_and_close(task, length, tokenizer):
    s = generate(task, length, 0, tokenizer)
    assert s.total_tokens <= length
    # within 2% of the budget, or of one haystack unit where a unit is coarser than that
    assert length - s.total_tokens <= max(0.02 * length, _unit_tokens(task, length, tokenizer))
    if length >= 8192:  # units (essay sentences: up to ~96 tokens) are finer than 2% from here on
        assert length - s.total_tokens <= 0.02 * length


def _unit_tokens(task, length, tok):
    """Tokens that one more haystack unit would add (the fitting granularity)."""
    from ruler.haystacks import Haystack
    from ruler.tasks import get_task

    spec = get_task(task)
    s = generate(task, length, 0, tok)
    hay = Haystack(spec.haystack, s.seed, spec.key_kind, spec.value_kind, noise_layout=spec.noise_layout)
    return max(len(encode(tok, hay.separator + hay.unit(i))) for i in range(s.num_units, s.num_units + 5))


def test_too_short_a_budget_says_so(tokenizer):
    with pytest.raises(LengthError, match="too short"):
        generate("mq_niah_8q", 200, 0, tokenizer)


def test_same_arguments_same_sample(tokenizer):
    a = generate("mq_niah_6q", 1024, 7, tokenizer, base_seed=3)
    b = generate("mq_niah_6q", 1024, 7, tokenizer, base_seed=3)
    assert a.to_dict() == b.to_dict()
    assert generate("mq_niah_6q", 1024, 8, tokenizer, base_seed=3).prompt != a.prompt


def test_no_seed_collisions_over_a_grid():
    lengths = [512, 1024, 2048, 4096, 8192, 16384, 32768]
    seeds = {sample_seed(t, n, i) for t in TASKS for n in lengths for i in range(1000)}
    assert len(seeds) == len(TASKS) * len(lengths) * 1000
    # the reference's failure: two names of equal length
    assert sample_seed("niah_single_1", 1024, 0) != sample_seed("niah_single_2", 1024, 0)


def test_balanced_partitions_and_split_turns(tokenizer):
    splits = partitions(4)
    assert len(splits) == 6 and all(len(a) == 2 and sorted(a + b) == [0, 1, 2, 3] for a, b in splits)
    for i in range(len(splits)):
        s = generate("mq_niah_4q", 1024, 0, tokenizer, split_index=i)
        assert len(s.turns) == 2
        assert {n.key for n in s.needles_for_turn(0)} == set(s.turns[0].keys)
        assert set(s.turns[0].keys).isdisjoint(s.turns[1].keys) and len(s.turns[1].outputs) == 2


@pytest.mark.parametrize("task", ["mq_niah_2q", "mq_niah_4q", "mq_niah_8q"])
def test_clean_splits_keep_turn2_needles_before_the_window(task, tokenizer):
    for index in range(5):
        s = generate(task, 2048, index, tokenizer, split="clean", recency_window=512)
        for n in s.needles_for_turn(1):
            assert n.token_end <= s.prompt_tokens - 512


def test_recent_tokens_can_be_kept_free_of_needles(tokenizer):
    for index in range(5):
        s = generate("niah_multikey_1", 1024, index, tokenizer, recent_free_tokens=300)
        assert all(n.token_end <= s.prompt_tokens - 300 for n in s.needles)


def test_multi_turn_schedule_with_revisits(tokenizer):
    schedule = [[0, 1], [2], [0], [3, 1]]
    s = generate("mq_niah_4q", 2048, 0, tokenizer, split="schedule", schedule=schedule)
    assert [len(t.keys) for t in s.turns] == [2, 1, 1, 2]
    assert s.turns[2].keys == s.turns[0].keys[:1]
    first = next(n for n in s.needles if n.key == s.turns[0].keys[0])
    assert first.turns == [0, 2]


def test_ordinal_questions_do_not_repeat_keys(tokenizer):
    s = generate("mq_niah_4q", 1024, 1, tokenizer, question_style="ordinal")
    later = s.turns[1]
    assert not any(k in later.question for k in later.keys)
    by_position = sorted(s.needles, key=lambda n: n.start)
    for key in later.keys:
        ordinal = ["first", "second", "third", "fourth"][[n.key for n in by_position].index(key)]
        assert f"the {ordinal} key" in later.question
    assert all(k in s.turns[0].question for k in s.turns[0].keys)  # turn 1 stays literal


def test_fixed_depths_place_needles_in_order(tokenizer):
    s = generate("mq_niah_4q", 2048, 0, tokenizer, depths=[0.1, 0.4, 0.6, 0.9])
    depths = [n.depth for n in s.needles]
    assert depths == sorted(depths) and abs(depths[0] - 0.1) < 0.05 and abs(depths[-1] - 0.9) < 0.05


def test_bad_options_are_named(tokenizer):
    with pytest.raises(ValueError, match="unknown task options"):
        generate("mq_niah_4q", 1024, 0, tokenizer, needles=3)
    with pytest.raises(ValueError, match="recency_window"):
        generate("mq_niah_4q", 1024, 0, tokenizer, split="clean")
    with pytest.raises(ValueError, match="unknown task"):
        generate("niah_nope", 1024, 0, tokenizer)


def test_essay_haystack_from_any_file(tmp_path, tokenizer):
    essay = tmp_path / "essay.txt"
    essay.write_text("Alpha beta gamma. Delta epsilon zeta! Eta theta iota?")
    s = generate("niah_single_2", 512, 0, tokenizer, essay_path=str(essay))
    assert "Delta epsilon zeta!" in s.prompt


def test_tagged_needles_put_the_key_right_before_its_value(tokenizer):
    sample = generate("mq_niah_4q_embedded", 512, 3, tokenizer)
    for needle in sample.needles:
        assert needle.text == f"One of the special magic numbers is: {needle.key}{needle.value}."
        assert sample.prompt[needle.value_start - len(needle.key) : needle.value_end] == needle.key + needle.value
    turn = sample.turns[0]
    assert turn.gold_answer("tagged") == " " + ", ".join(k + v for k, v in zip(turn.keys, turn.outputs)) + "."
    with pytest.raises(ValueError, match="needle_style"):
        generate("mq_niah_4q_embedded", 512, 0, tokenizer, needle_style="fancy")
    # distractor needles (niah_multikey_2's haystack) take the same style
    distracted = generate("niah_multikey_2", 512, 0, tokenizer, needle_style="tagged", key_kind="word")
    assert distracted.prompt.count("One of the special magic numbers is: ") > 3
    assert " for " not in distracted.prompt.split("\n", 1)[1]


def test_answer_spans_run_from_the_key_to_the_value(tokenizer):
    from ruler import generate
    from ruler.render import encode, render

    for task in ("mq_niah_4q", "mq_niah_4q_embedded"):
        sample = generate(task, 512, 0, tokenizer)
        ids = encode(tokenizer, render(sample, tokenizer).prompt_text)
        for n in sample.needles:
            text = tokenizer.decode(ids[n.answer_token_start : n.answer_token_end])
            assert n.key in text and n.value in text and n.token_start <= n.answer_token_start < n.answer_token_end <= n.token_end
