"""Keys and values for needles: words, numbers, artifacts, uuids. All drawn from a seeded RNG."""

from __future__ import annotations

import random
import uuid
from functools import lru_cache
from pathlib import Path

KEY_KINDS = ("words", "noun_pairs", "word", "numbers", "artifact", "uuids")
DATA = Path(__file__).parent / "data"
VALUE_KINDS = ("numbers", "uuids")
TYPE_NAMES = {"numbers": "numbers", "uuids": "uuids"}


@lru_cache(maxsize=1)
def word_list() -> tuple[str, ...]:
    words = (DATA / "words.txt").read_text().split()
    return tuple(sorted(set(words)))


@lru_cache(maxsize=2)
def wonderwords(part: str) -> tuple[str, ...]:
    """wonderwords' adjective or noun list (ruler/data/{adjectives,nouns}.txt, MIT, ruler/data/WONDERWORDS_LICENSE),
    the lists RULER's keys are drawn from; a line is one entry, spaces included."""
    lines = (DATA / f"{part}.txt").read_text(encoding="utf-8").splitlines()
    return tuple(sorted({line.strip() for line in lines if line.strip()}))


def make_key(kind: str, rng: random.Random) -> str:
    if kind == "words":  # RULER's: an adjective-noun pair, uniform over every pair
        return f"{rng.choice(wonderwords('adjectives'))}-{rng.choice(wonderwords('nouns'))}"
    if kind == "noun_pairs":  # this project's earlier keys: two distinct words of its own list
        a, b = rng.sample(word_list(), 2)
        return f"{a}-{b}"
    if kind == "word":  # one word: a single token for a tokenizer trained on these words
        return rng.choice(word_list())
    if kind == "numbers":
        return str(rng.randint(10**6, 10**7 - 1))
    if kind == "artifact":
        return f"artifact-{rng.randint(10**4, 10**5 - 1)}"
    if kind == "uuids":
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))
    raise ValueError(f"unknown key kind {kind!r}; choose one of {KEY_KINDS}")


def make_value(kind: str, rng: random.Random, digits: int = 7) -> str:
    if kind == "numbers":
        return str(rng.randint(10 ** (digits - 1), 10**digits - 1))
    if kind == "uuids":
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))
    raise ValueError(f"unknown value kind {kind!r}; choose one of {VALUE_KINDS}")


def distinct(make, count: int, rng: random.Random, forbidden: set[str] = frozenset()) -> list[str]:
    """`count` distinct draws of make(rng), none of them in `forbidden` nor substrings of each other."""
    out: list[str] = []
    for _ in range(count * 1000):
        item = make(rng)
        if item in forbidden or any(item in o or o in item for o in out):
            continue
        out.append(item)
        if len(out) == count:
            return out
    raise RuntimeError(f"could not draw {count} distinct items")
