"""The embedded model's tokenizer: byte-level BPE trained on the project's own task text,
with enough merges that every key word is one token and digits are one token each."""

from __future__ import annotations

import random

from ruler.keys import word_list
from ruler.templates import NEEDLE, QUESTION
from ruler.tokenizer import train_tokenizer, training_corpus


def embedded_corpus(seed: int = 0):
    yield from training_corpus(seed=seed)
    rng = random.Random(seed)
    words = word_list()
    for _ in range(6):  # each key word, in the contexts it appears in
        for word in words:
            yield NEEDLE.format(type_value="numbers", key=word, value=rng.randint(1000, 9999))
            yield QUESTION.format(type_value="numbers", query=f"{word}, and {rng.choice(words)}") + f" {word}: {rng.randint(1000, 9999)}."


def build_tokenizer(vocab_size: int = 2048):
    return train_tokenizer(vocab_size=vocab_size, texts=embedded_corpus())


def single_token_fraction(tokenizer) -> float:
    words = word_list()
    return sum(len(tokenizer.tokenize(" " + w)) == 1 for w in words) / len(words)
