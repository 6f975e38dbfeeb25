"""RULER's common-words (cwe) and frequent-words (fwe) extraction, as its generators write them
(scripts/data/synthetic/common_words_extraction.py and freq_words_extraction.py; read, not copied).

cwe: a numbered list ("1. word 2. word ...") in which 10 words repeat 30 times and the rest 3
times (6 and 1 below 4096 tokens), words drawn from wonderwords' nouns, adjectives and verbs; one
solved example first (40 words, 10 / 3 repeats; 20 words, 3 / 1 below 4096). The answer is the
10 common words; 120 answer tokens.
fwe: coded 6-letter words drawn from a Zipf law (count of the k-th word = n k^-alpha / zeta(alpha),
alpha 2), the most frequent one replaced by "...", over a vocabulary of (length - 50) / 50 words;
the answer is the 2nd to 4th most frequent; 50 answer tokens.

Every occurrence of an answer word is annotated as a needle of turn 1: the rows that answer it.
RULER shuffles with its fixed --random_seed (the same permutation for every sample of a size);
here each sample's own seed draws its words and its order.
"""

from __future__ import annotations

import random
import string
from dataclasses import asdict, dataclass, fields, replace

from ruler.keys import DATA, wonderwords
from ruler.render import annotate_tokens, encode, render, use_chat
from ruler.sample import Needle, Sample, Turn
from ruler.seeding import sample_seed

CWE_INSTRUCTION = ("Below is a numbered list of words. In these words, some appear more often than others. Memorize the ones "
                   "that appear most often.\n")
CWE_QUESTION = "Question: What are the 10 most common words in the above list?"
CWE_PREFIX = " Answer: The top 10 words that appear most often in the list are:"
FWE_INSTRUCTION = ("Read the following coded text and track the frequency of each coded word. Find the three most frequently "
                   "appeared coded words. ")
FWE_QUESTION = ("Question: Do not provide any explanation. Please ignore the dots '....'. What are the three most frequently "
                "appeared words in the above coded text?")
FWE_PREFIX = " Answer: According to the coded text above, the three most frequently appeared words are:"


@dataclass(frozen=True)
class WordsSpec:
    name: str  # cwe | fwe
    answer_tokens: int  # RULER's tokens_to_generate: 120 (cwe), 50 (fwe)
    num_cw: int = 10  # cwe: the common words
    freq_cw: int = 30  # cwe: repeats of a common word (at >= 4096 tokens)
    freq_ucw: int = 3  # cwe: repeats of an uncommon word
    example: bool = True  # cwe: RULER's solved example first
    alpha: float = 2.0  # fwe: the Zipf exponent
    word_length: int = 6  # fwe: letters of a coded word
    chat: bool | None = None

    def with_options(self, **overrides) -> "WordsSpec":
        unknown = sorted(set(overrides) - {f.name for f in fields(self)})
        if unknown:
            raise ValueError(f"unknown {self.name} options {unknown}")
        return replace(self, **overrides)

    def generate(self, length: int, index: int, tokenizer, base_seed: int = 0) -> Sample:
        return generate_words(self, length, index, tokenizer, base_seed)


WORD_TASKS = {spec.name: spec for spec in [WordsSpec("cwe", answer_tokens=120), WordsSpec("fwe", answer_tokens=50)]}


def cwe_words() -> list[str]:
    """wonderwords' nouns, adjectives and verbs (ruler/data/), distinct and sorted, as RULER pools them."""
    verbs = [w.strip() for w in (DATA / "verbs.txt").read_text(encoding="utf-8").splitlines() if w.strip()]
    return sorted(set(wonderwords("nouns")) | set(wonderwords("adjectives")) | set(verbs))


def numbered(words: list[str]) -> str:
    return " ".join(f"{i + 1}. {w}" for i, w in enumerate(words))


def cwe_list(rng: random.Random, pool: list[str], num_words: int, common_repeats: int, uncommon_repeats: int, num_cw: int):
    """(the shuffled list, the common words)."""
    if num_words > len(pool):
        raise ValueError(f"cwe needs {num_words} distinct words; the word lists hold {len(pool)} (RULER then draws from "
                         "its english_words.json, which is not shipped here)")
    chosen = rng.sample(pool, num_words)
    common, uncommon = chosen[:num_cw], chosen[num_cw:]
    words = common * common_repeats + uncommon * uncommon_repeats
    rng.shuffle(words)
    return words, common


def zeta(s: float, terms: int = 1000) -> float:
    """Riemann zeta for s > 1: a partial sum and its Euler-Maclaurin tail."""
    return sum(k ** -s for k in range(1, terms)) + terms ** (1 - s) / (s - 1) + terms ** -s / 2


def fwe_vocabulary(rng: random.Random, size: int, letters: int) -> list[str]:
    vocab: set[str] = set()
    while len(vocab) < size:
        vocab.add("".join(rng.choices(string.ascii_lowercase, k=letters)))
    out = sorted(vocab)
    rng.shuffle(out)
    out[0] = "..."  # the most frequent word is the noise RULER tells the model to ignore
    return out


def fwe_text(rng: random.Random, vocab: list[str], num_words: int, alpha: float) -> list[str]:
    norm = zeta(alpha)
    words = [w for k, w in enumerate(vocab, start=1) for _ in range(int(num_words * k ** -alpha / norm))]
    rng.shuffle(words)
    return words


def _sample(spec: WordsSpec, seed: int, length: int, index: int, tokenizer, chat: bool, size: int) -> Sample:
    """The task with `size` words (cwe: distinct words; fwe: words of text)."""
    rng = random.Random(seed)
    if spec.name == "cwe":
        pool = cwe_words()
        small = length < 4096  # RULER's short-context setting
        head = ""
        if spec.example:
            shown, answer = cwe_list(rng, pool, 20 if small else 40, 3 if small else 10, 1 if small else 3, spec.num_cw)
            head = CWE_INSTRUCTION + numbered(shown) + "\n" + CWE_QUESTION + CWE_PREFIX + " " + numbered(answer) + "\n"
        words, answers = cwe_list(rng, pool, size, 6 if small else spec.freq_cw, 1 if small else spec.freq_ucw, spec.num_cw)
        head += CWE_INSTRUCTION
        items = [f"{i + 1}. {w}" for i, w in enumerate(words)]
        question, prefix = CWE_QUESTION, CWE_PREFIX
    else:
        vocab = fwe_vocabulary(rng, max(4, (length - spec.answer_tokens) // 50), spec.word_length)
        words, answers = fwe_text(rng, vocab, size, spec.alpha), vocab[1:4]
        head, items = FWE_INSTRUCTION, list(words)
        question, prefix = FWE_QUESTION, FWE_PREFIX
    needles, pos, wanted = [], len(head), set(answers)
    for item, word in zip(items, words):
        if word in wanted:
            value_start = pos + len(item) - len(word)
            key = item.split(".")[0] if spec.name == "cwe" else ""  # a cwe item's number; a coded word is all value
            needles.append(Needle(key, word, item, pos, pos + len(item), value_start, value_start + len(word), [0]))
        pos += len(item) + 1
    prompt = head + " ".join(items) + "\n"
    sample = Sample(spec.name, length, index, seed, prompt, [Turn(question, prefix, [], list(answers))], needles,
                    spec.name, size, chat=chat, options={**asdict(spec), "answer_format": "values"})
    rendered = render(sample, tokenizer)
    ids = annotate_tokens(sample, tokenizer, rendered)
    sample.prompt_tokens = len(ids)
    sample.total_tokens = len(ids) + len(encode(tokenizer, rendered.turn_texts[0])) + spec.answer_tokens
    return sample


def generate_words(spec: WordsSpec, length: int, index: int, tokenizer, base_seed: int = 0) -> Sample:
    """One cwe / fwe sample fitted to `length` tokens: the most words that fit (a binary search)."""
    from ruler.generation import LengthError

    seed = sample_seed(spec.name, length, index, base_seed)
    chat = use_chat(spec.chat, tokenizer)
    build = lambda n: _sample(spec, seed, length, index, tokenizer, chat, n)  # noqa: E731
    least = spec.num_cw + 1 if spec.name == "cwe" else 64
    best = build(least)
    if best.total_tokens > length:
        raise LengthError(f"{spec.name}: length {length} is too short for {least} words and {spec.answer_tokens} answer tokens")
    lo, hi = least, 2 * least
    while (s := build(hi)).total_tokens <= length:
        lo, best, hi = hi, s, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        s = build(mid)
        if s.total_tokens <= length:
            lo, best = mid, s
        else:
            hi = mid
    return best
