"""Haystack units: the filler between needles, one unit at a time.

Unit i is a pure function of (sample seed, i), so growing or shrinking the haystack while
fitting a length never changes the units already placed.
"""

from __future__ import annotations

import random
import re
from functools import lru_cache
from pathlib import Path

from ruler.keys import make_key, make_value
from ruler.templates import NEEDLE, NOISE

DEFAULT_ESSAY = Path(__file__).parent / "data" / "essay.txt"


def _sentences(text: str) -> tuple[str, ...]:
    parts = re.split(r"(?<=[.!?])\s+", " ".join(text.split()))
    return tuple(p for p in parts if p)


def corpus_text(path: Path) -> str:
    """The essay corpus at `path`: a text file, a folder of .txt files (sorted by name), or RULER's
    PaulGrahamEssays.json (its "text" field, as RULER's scripts write it)."""
    if path.is_dir():
        files = sorted(path.glob("*.txt"))
        if not files:
            raise FileNotFoundError(f"essay corpus folder {path} holds no .txt file (essay_path)")
        return "\n".join(f.read_text(encoding="utf-8") for f in files)
    if not path.is_file():
        raise FileNotFoundError(f"essay corpus {path} does not exist (essay_path)")
    if path.suffix == ".json":
        import json

        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or not isinstance(data.get("text"), str):
            raise ValueError(f"{path}: expected RULER's PaulGrahamEssays.json, an object with a \"text\" string")
        return data["text"]
    return path.read_text(encoding="utf-8")


@lru_cache(maxsize=8)
def essay_sentences(path: str) -> tuple[str, ...]:
    sentences = _sentences(corpus_text(Path(path)))
    if not sentences:
        raise ValueError(f"essay corpus {path} has no text")
    return sentences


def warn_if_repeated(haystack: "Haystack", units: int, task: str) -> None:
    """Repeating the corpus inside one sample is a weaker haystack: say so (once per corpus and size)."""
    if haystack.kind == "essay" and units > len(haystack._cycle):
        _warn_repeat(haystack.source, len(haystack._cycle), task)


@lru_cache(maxsize=64)
def _warn_repeat(source: str, sentences: int, task: str) -> None:
    import warnings

    warnings.warn(f"{task}: the essay corpus {source} has {sentences} sentences and a sample needs more, so its text "
                  "repeats inside the sample; point essay_path at a larger corpus (a folder of .txt files or RULER's "
                  "PaulGrahamEssays.json)", stacklevel=3)


class Haystack:
    """Unit i of a haystack kind; `separator` joins units (and needles) into the context."""

    def __init__(self, kind: str, seed: int, key_kind: str = "words", value_kind: str = "numbers",
                 value_digits: int = 7, essay_path: str | None = None, forbidden: frozenset[str] = frozenset(),
                 needle_template: str = NEEDLE, noise_layout: str = "ruler"):
        self.kind, self.seed, self.needle_template = kind, seed, needle_template
        self.key_kind, self.value_kind, self.value_digits = key_kind, value_kind, value_digits
        self.forbidden = forbidden  # keys/values of real needles: a distractor must not repeat them
        if kind == "noise" and noise_layout == "ruler":  # RULER: the whole block per unit, one per line
            self._cycle, self.separator = (NOISE,), "\n"
        elif kind == "noise":  # the embedded model's: one sentence per unit, joined by spaces
            self._cycle, self.separator = _sentences(NOISE), " "
        elif kind == "essay":
            self.source = str(essay_path or DEFAULT_ESSAY)
            self._cycle, self.separator = essay_sentences(self.source), " "
        elif kind == "needle":
            self._cycle, self.separator = (), "\n"
        else:
            raise ValueError(f"unknown haystack {kind!r}")

    def unit(self, i: int) -> str:
        if self.kind != "needle":
            return self._cycle[i % len(self._cycle)]
        rng = random.Random(f"{self.seed}/distractor/{i}")
        for _ in range(100):
            key = make_key(self.key_kind, rng)
            value = make_value(self.value_kind, rng, self.value_digits)
            if not any(key in f or f in key or value in f or f in value for f in self.forbidden):
                type_value = "numbers" if self.value_kind == "numbers" else "uuids"
                return self.needle_template.format(type_value=type_value, key=key, value=value)
        raise RuntimeError("could not draw a distractor needle distinct from the real ones")

    def units(self, n: int) -> list[str]:
        return [self.unit(i) for i in range(n)]
