"""RULER's variable tracking (vt): chains of variable assignments hidden in the noise haystack.

As RULER's generator (scripts/data/synthetic/variable_tracking.py, read, not copied) writes it:
- a chain is `VAR XXXXX = 12345` then `VAR YYYYY = VAR XXXXX ` (num_hops of them, each line
  ending in a space), with 5-letter upper-case names and a 5-digit value;
- every chain's lines go to sorted random places among the noise blocks, one item per line;
- the prompt opens with one solved example (3-letter names, 4 hops at most, fitted to 500
  tokens, its names and value redrawn), its answer, and a blank line;
- the question asks every variable assigned the first chain's value; 30 answer tokens.

`vt_split` is this project's split-turn version for repair: two chains, turn 1 asks one and
turn 2 the other, each assignment line annotated as a needle of the turn that asks its chain.
`split: clean` also keeps the later turns' chains out of the last `recency_window` prompt
tokens (phase03's clean split: a recent window cannot keep them by position).

`vt_split_embedded` is ours, for the embedded model, whose tokenizer spells RULER's names letter by
letter: `names: words` draws each name from ruler's key words (one token each for that tokenizer),
and it has no solved example. RULER's lines, question and answer prefix are unchanged.
`vt_embedded` asks one of its two chains in one turn: no earlier answer to lean on.
"""

from __future__ import annotations

import random
import re
import string
from dataclasses import asdict, dataclass
from functools import lru_cache

from ruler.keys import word_list
from ruler.render import annotate_tokens, encode, render, use_chat
from ruler.sample import Needle, Sample, Turn
from ruler.seeding import sample_seed
from ruler.templates import NOISE

INSTRUCTION = "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n"
QUESTION = "Question: Find all variables that are assigned the value {query} in the text above."
ANSWER_PREFIX = (" Answer: According to the chain(s) of variable assignment in the text above, {num_v} variables are "
                 "assigned the value {query}, they are: ")
EXAMPLE_TOKENS = 500  # RULER fits its solved example to 500 tokens


@dataclass(frozen=True)
class VTSpec:
    name: str
    num_chains: int = 1
    num_hops: int = 4
    split: str = "all"  # all: one turn asks chain 0 (RULER); balanced: turn t asks chain t; clean: balanced + recency_window
    recency_window: int = 0  # prompt tokens at the end where a clean split puts no later-turn chain line
    answer_tokens: int = 30  # RULER's tokens_to_generate for vt
    example: bool = True  # RULER's one solved example before the task
    names: str = "letters"  # letters: RULER's upper-case names; words: one of ruler's key words each (ours)
    chat: bool | None = None

    def generate(self, length: int, index: int, tokenizer, base_seed: int = 0) -> Sample:
        return generate_vt(self, length, index, tokenizer, base_seed)

    def with_options(self, **overrides) -> "VTSpec":
        from dataclasses import fields, replace

        unknown = sorted(set(overrides) - {f.name for f in fields(self)})
        if unknown:
            raise ValueError(f"unknown vt options {unknown}")
        return replace(self, **overrides)


VT_TASKS = {spec.name: spec for spec in [
    VTSpec("vt"),
    VTSpec("vt_split", num_chains=2, split="balanced"),
    VTSpec("vt_split_embedded", num_chains=2, split="balanced", example=False, names="words"),
    VTSpec("vt_embedded", num_chains=2, example=False, names="words"),  # one question, about chain 0 of two
]}
NAME_KINDS = ("letters", "words")


def draw_name(rng: random.Random, kind: str, letters: int) -> str:
    if kind == "letters":
        return "".join(rng.choices(string.ascii_uppercase, k=letters))
    return rng.choice(name_words())


@lru_cache(maxsize=1)
def name_words() -> tuple[str, ...]:
    """Key words that no template line contains, so a name's string match cannot hit the prompt's own text."""
    fixed = " ".join([NOISE, INSTRUCTION, QUESTION, ANSWER_PREFIX, "VAR"]).lower()
    return tuple(w for w in word_list() if w not in fixed and len(w) >= 3)


def chains(rng: random.Random, num_chains: int, num_hops: int, letters: int = 5, value: str | None = None, kind: str = "letters"):
    """(names per chain, lines per chain): distinct names (none inside another); each chain starts at a value."""
    drawn: list[str] = []
    while len(drawn) < num_chains * (num_hops + 1):
        name = draw_name(rng, kind, letters)
        if not any(name in other or other in name for other in drawn):
            drawn.append(name)
    out_names, out_lines = [], []
    for c in range(num_chains):
        chain = drawn[c * (num_hops + 1) : (c + 1) * (num_hops + 1)]
        start = value if value is not None else str(rng.randint(10000, 99999))
        out_names.append(chain)
        out_lines.append([f"VAR {chain[0]} = {start}"] + [f"VAR {chain[j + 1]} = VAR {chain[j]} " for j in range(num_hops)])
    return out_names, out_lines


def lay_out(rng: random.Random, lines: list[list[str]], num_noise: int, later_free: int = 0) -> list[tuple[str, int | None]]:
    """Noise blocks with every chain's lines at sorted random places: (text, chain or None) per line;
    chains after the first are kept out of the last `later_free` items."""
    items: list[tuple[str, int | None]] = [(NOISE, None)] * num_noise
    for c, chain in enumerate(lines):
        room = len(items) - (later_free if c else 0)
        places = sorted(rng.sample(range(max(room, len(chain))), len(chain)))
        for j, (place, line) in enumerate(zip(places, chain)):
            items.insert(place + j, (line, c))
    return items


def _question(names: list[str], value: str) -> tuple[str, str]:
    return QUESTION.format(query=value), ANSWER_PREFIX.format(num_v=len(names), query=value)


def solved_example(rng: random.Random, spec: VTSpec, tokenizer) -> str:
    """RULER's solved example: the task with 3-letter names and the value 12345, as many noise
    blocks as fit in 500 tokens, then its answer; the answer's names and the value redrawn
    (whole words here; RULER replaces substrings)."""
    names, lines = chains(rng, spec.num_chains, min(10, spec.num_hops), letters=3, value="12345", kind=spec.names)
    question = "".join(_question(names[0], "12345"))
    example = lambda n: INSTRUCTION + "\n".join(t for t, _ in lay_out(random.Random(n), lines, n)) + "\n" + question  # noqa: E731
    least = len(lines[0])  # RULER places a chain's lines among at least as many blocks
    best = example(least)
    for n in range(least + 1, 1000):
        text = example(n)
        if len(encode(tokenizer, text)) > EXAMPLE_TOKENS:
            break
        best = text
    text = best + " " + " ".join(names[0])
    for name in names[0]:
        text = re.sub(rf"\b{name}\b", draw_name(rng, spec.names, len(name)), text)
    return text.replace("12345", str(rng.randint(10000, 99999))) + "\n"


def _build(spec: VTSpec, seed: int, num_noise: int, example: str, length: int, index: int, tokenizer, chat: bool,
           later_free: int = 0) -> Sample:
    rng = random.Random(seed)
    names, lines = chains(rng, spec.num_chains, spec.num_hops, kind=spec.names)
    items = lay_out(random.Random(seed + num_noise), lines, num_noise, later_free)
    head = example + INSTRUCTION
    pieces, needles, pos = [], [], len(head)
    for i, (text, chain) in enumerate(items):
        if i:
            pieces.append("\n")
            pos += 1
        if chain is not None:
            key, value = text.split()[1], text.split()[-1]
            value_start = pos + text.rindex(value)
            turns = [chain] if spec.split != "all" else ([0] if chain == 0 else [])
            needles.append(Needle(key, value, text, pos, pos + len(text), value_start, value_start + len(value), turns))
        pieces.append(text)
        pos += len(text)
    context = "".join(pieces)  # RULER's `.replace(". \n", ".\n")` changes nothing here: no line ends in ". "
    asked = range(spec.num_chains if spec.split != "all" else 1)
    turns = []
    for c in asked:
        value = lines[c][0].split()[-1]
        question, prefix = _question(names[c], value)
        turns.append(Turn(question, prefix, [names[c][0]], list(names[c])))
    sample = Sample(spec.name, length, index, seed, head + context + "\n", turns, needles, "noise", num_noise, chat=chat,
                    options={**asdict(spec), "answer_format": "values"})
    rendered = render(sample, tokenizer)
    ids = annotate_tokens(sample, tokenizer, rendered)
    sample.prompt_tokens = len(ids)
    sample.total_tokens = len(ids) + sum(len(encode(tokenizer, t)) for t in rendered.turn_texts) + spec.answer_tokens * len(turns)
    return sample


def generate_vt(spec: VTSpec, length: int, index: int, tokenizer, base_seed: int = 0) -> Sample:
    """One vt sample fitted to `length` tokens: the most noise blocks that fit (a binary search)."""
    from ruler.generation import LengthError

    if spec.names not in NAME_KINDS:
        raise ValueError(f"{spec.name}: names {spec.names!r} not in {NAME_KINDS}")
    if spec.split not in ("all", "balanced", "clean"):
        raise ValueError(f"{spec.name}: split {spec.split!r} not in ('all', 'balanced', 'clean')")
    if spec.split != "all" and spec.num_chains < 2:
        raise ValueError(f"{spec.name}: a split needs at least 2 chains")
    if spec.split == "clean" and spec.recency_window <= 0:
        raise ValueError(f"{spec.name}: split='clean' needs recency_window > 0")
    seed = sample_seed(spec.name, length, index, base_seed)
    chat = use_chat(spec.chat, tokenizer)
    # the example goes before the task's own instruction, then a blank line (RULER inserts it with "\n")
    example = solved_example(random.Random(seed ^ 0x5EED), spec, tokenizer) + "\n" if spec.example else ""
    for later_free in range(0, 10_000, 4):  # clean: grow the chain-free tail until the later chains end before the window
        sample = _fit(spec, seed, example, length, index, tokenizer, chat, later_free)
        limit = sample.prompt_tokens - spec.recency_window
        if spec.split != "clean" or all(n.token_end <= limit for n in sample.needles if n.turns and n.turns[0] > 0):
            return sample
    raise LengthError(f"{spec.name}: could not keep the later chains out of the last {spec.recency_window} tokens")


def _fit(spec: VTSpec, seed: int, example: str, length: int, index: int, tokenizer, chat: bool, later_free: int) -> Sample:
    from ruler.generation import LengthError

    build = lambda n: _build(spec, seed, n, example, length, index, tokenizer, chat, later_free)  # noqa: E731
    least = spec.num_hops + 1  # a chain's lines go among at least as many noise blocks
    best = build(least)
    if best.total_tokens > length:
        raise LengthError(f"{spec.name}: length {length} is too short for its example, chains and {spec.answer_tokens} answer tokens")
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
