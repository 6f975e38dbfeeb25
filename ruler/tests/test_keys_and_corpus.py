"""RULER's keys (adjective-noun pairs from wonderwords' lists, shipped) and the essay haystack from
a corpus the user points to: a folder of text files or RULER's PaulGrahamEssays.json, repeated
only when it must be, with a warning then."""

import json
import random
import warnings

import pytest

from ruler import generate
from ruler.keys import make_key, wonderwords


def test_rulers_keys_are_adjective_noun_pairs_and_ours_an_option():
    rng = random.Random(0)
    adjectives, nouns = set(wonderwords("adjectives")), set(wonderwords("nouns"))
    assert len(adjectives) > 800 and len(nouns) > 6000
    for _ in range(50):
        key = make_key("words", rng)
        # some adjectives hold a hyphen themselves ("high-pitched"): some split must give an adjective and a noun
        splits = [(key[:i], key[i + 1:]) for i, c in enumerate(key) if c == "-"]
        assert any(a in adjectives and n in nouns for a, n in splits), key
    from ruler.keys import word_list

    a, b = make_key("noun_pairs", rng).split("-")
    assert a in word_list() and b in word_list() and a != b


def corpus_sentences(n: int) -> str:
    return " ".join(f"Sentence number {i} of the corpus says something new." for i in range(n))


def test_a_folder_corpus_is_read_in_order_and_not_repeated_when_large_enough(tmp_path, tokenizer):
    folder = tmp_path / "essays"
    folder.mkdir()
    (folder / "a.txt").write_text(corpus_sentences(400))
    (folder / "b.txt").write_text("The second file starts here. " + corpus_sentences(10))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no repetition: no warning
        sample = generate("niah_single_2", 1024, 0, tokenizer, essay_path=str(folder))
    assert sample.prompt.count("Sentence number 3 of the corpus") == 1
    assert "Sentence number 0 of the corpus says something new." in sample.prompt  # from the corpus' start, as RULER


def test_rulers_paul_graham_json_loads_and_a_small_corpus_warns(tmp_path, tokenizer):
    path = tmp_path / "PaulGrahamEssays.json"
    path.write_text(json.dumps({"text": corpus_sentences(5)}))
    with pytest.warns(UserWarning, match="repeats inside the sample"):
        sample = generate("niah_single_2", 1024, 1, tokenizer, essay_path=str(path))
    assert sample.prompt.count("Sentence number 3 of the corpus") > 1
    bad = tmp_path / "other.json"
    bad.write_text(json.dumps(["not", "an", "essay"]))
    with pytest.raises(ValueError, match="PaulGrahamEssays.json"):
        generate("niah_single_2", 1024, 1, tokenizer, essay_path=str(bad))
