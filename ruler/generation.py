"""Build a sample: draw keys, values, turns and depths from the sample's seed, assemble the
context around a haystack of n units, and fit n so the rendered sample fills the budget.
"""

from __future__ import annotations

import bisect
import itertools
import json
import random

from ruler.haystacks import Haystack, warn_if_repeated
from ruler.keys import distinct, make_key, make_value
from ruler.render import annotate_tokens, encode, render, use_chat
from ruler.sample import Needle, Sample, Turn
from ruler.seeding import sample_seed
from ruler.tasks import TaskSpec, get_task
from ruler.templates import NEEDLE_TEMPLATES, ORDINAL_QUERY, ORDINALS, instruction, join_queries, question_and_prefix
from ruler.variable_tracking import VT_TASKS, VTSpec
from ruler.word_extraction import WORD_TASKS, WordsSpec


class LengthError(ValueError):
    pass


NON_NIAH_TASKS = {**VT_TASKS, **WORD_TASKS}  # RULER's variable tracking, common and frequent words


def partitions(num_queries: int) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """All balanced splits of the queried keys: (turn-1 keys, turn-2 keys), in a fixed order."""
    half = num_queries // 2
    return [(first, tuple(i for i in range(num_queries) if i not in first)) for first in itertools.combinations(range(num_queries), half)]


def _schedule(spec: TaskSpec, rng: random.Random) -> list[tuple[int, ...]]:
    if spec.split == "all":
        return [tuple(range(spec.num_queries))]
    if spec.split == "schedule":
        return [tuple(t) for t in spec.schedule]
    splits = partitions(spec.num_queries)
    index = spec.split_index if spec.split_index is not None else rng.randrange(len(splits))
    if not 0 <= index < len(splits):
        raise ValueError(f"split_index {index} out of range: {spec.num_queries} keys have {len(splits)} balanced splits")
    return list(splits[index])


class _Draw:
    """The seed-determined content of a sample, independent of its length."""

    def __init__(self, spec: TaskSpec, seed: int):
        rng = random.Random(seed)
        self.spec, self.seed = spec, seed
        self.keys = distinct(lambda r: make_key(spec.key_kind, r), spec.num_keys, rng)
        n_needles = spec.num_keys * spec.num_values
        self.values = distinct(lambda r: make_value(spec.value_kind, r, spec.value_digits), n_needles, rng, set(self.keys))
        self.schedule = _schedule(spec, rng)
        self.depths = list(spec.depths) or [rng.random() for _ in range(n_needles)]
        # Needle j belongs to key j // num_values; queried keys are the first num_queries.
        self.later_turn_keys = {k for turn in self.schedule[1:] for k in turn}
        forbidden = frozenset(self.keys) | frozenset(self.values)
        self.haystack = Haystack(spec.haystack, seed, spec.key_kind, spec.value_kind, spec.value_digits, spec.essay_path, forbidden,
                                 NEEDLE_TEMPLATES[spec.needle_style], spec.noise_layout)
        self.instruction = instruction(spec.value_kind, spec.num_queries * spec.num_values, spec.wording)


def _assemble(draw: _Draw, n_units: int, depth_cap_all: float, depth_cap_later: float) -> tuple[str, list[Needle]]:
    spec = draw.spec
    type_value = "numbers" if spec.value_kind == "numbers" else "uuids"
    units = draw.haystack.units(n_units)
    # Depth is a fraction of the haystack's characters (a close proxy for its tokens, unlike
    # a count of units of uneven length); a needle goes to the unit boundary nearest to it.
    ends = list(itertools.accumulate(len(u) + len(draw.haystack.separator) for u in units))
    placed = []  # (slot, depth, needle index)
    for j, depth in enumerate(draw.depths):
        cap = depth_cap_later if j // spec.num_values in draw.later_turn_keys else depth_cap_all
        d = min(depth, cap)
        target = d * (ends[-1] if ends else 0)
        i = bisect.bisect_left(ends, target)  # the boundary after unit i is the first at or past target
        before, after = (ends[i - 1] if i else 0), (ends[i] if i < len(ends) else None)
        slot = i if after is None or target - before <= after - target else i + 1
        placed.append((slot, d, j))
    placed.sort()
    pieces: list[str] = []
    spans: dict[int, tuple[int, int, int, int]] = {}
    pos, cursor = 0, 0
    sep = draw.haystack.separator
    base = len(draw.instruction)
    needle = NEEDLE_TEMPLATES[spec.needle_style]

    def emit(text: str) -> int:
        nonlocal pos
        if pieces:
            pieces.append(sep)
            pos += len(sep)
        start = pos
        pieces.append(text)
        pos += len(text)
        return start

    for slot, _, j in placed:
        while cursor < slot:
            emit(units[cursor])
            cursor += 1
        key, value = draw.keys[j // spec.num_values], draw.values[j]
        text = needle.format(type_value=type_value, key=key, value=value)
        start = emit(text)
        v = start + text.rindex(value)
        spans[j] = (base + start, base + start + len(text), base + v, base + v + len(value))
    while cursor < n_units:
        emit(units[cursor])
        cursor += 1
    context = "".join(pieces)
    needles = []
    for j in range(len(draw.depths)):
        k = j // spec.num_values
        a, b, va, vb = spans[j]
        text = needle.format(type_value=type_value, key=draw.keys[k], value=draw.values[j])
        turns = [t for t, keys in enumerate(draw.schedule) if k in keys]
        needles.append(Needle(draw.keys[k], draw.values[j], text, a, b, va, vb, turns))
    return draw.instruction + context + "\n", needles


def _turns(draw: _Draw, needles: list[Needle]) -> list[Turn]:
    spec = draw.spec
    order = sorted(range(spec.num_keys), key=lambda k: min(n.start for n in needles if n.key == draw.keys[k]))
    turns = []
    for t, keys in enumerate(draw.schedule):
        if spec.question_style == "ordinal" and t > 0:
            names = [ORDINAL_QUERY.format(ordinal=ORDINALS[order.index(k)]) for k in keys]
        else:
            names = [draw.keys[k] for k in keys]
        query = join_queries(names)
        outputs = [draw.values[k * spec.num_values + v] for k in keys for v in range(spec.num_values)]
        question, prefix = question_and_prefix(spec.value_kind, query, len(outputs), spec.wording)
        turns.append(Turn(question, prefix, [draw.keys[k] for k in keys], outputs))
    return turns


def _build(draw, spec, task, length, index, n_units, caps, tokenizer, chat) -> Sample:
    prompt, needles = _assemble(draw, n_units, *caps)
    sample = Sample(task, length, index, draw.seed, prompt, _turns(draw, needles), needles, spec.haystack, n_units, chat=chat,
                    options=json.loads(json.dumps({k: v for k, v in vars(spec).items() if k != "extra"})))
    rendered = render(sample, tokenizer)
    ids = annotate_tokens(sample, tokenizer, rendered)
    sample.prompt_tokens = len(ids)
    turn_tokens = sum(len(encode(tokenizer, t)) for t in rendered.turn_texts)
    sample.total_tokens = len(ids) + turn_tokens + spec.answer_tokens * len(sample.turns)
    return sample


def generate(task: str | TaskSpec | VTSpec | WordsSpec, length: int, index: int, tokenizer, base_seed: int = 0, **overrides) -> Sample:
    """One sample of `task` fitted to `length` tokens (prompt + turns + reserved answers)."""
    if isinstance(task, (VTSpec, WordsSpec)) or task in NON_NIAH_TASKS:  # vt, cwe, fwe: their own generators
        spec = NON_NIAH_TASKS[task] if isinstance(task, str) else task
        return (spec.with_options(**overrides) if overrides else spec).generate(length, index, tokenizer, base_seed)
    spec = get_task(task, **overrides) if isinstance(task, str) else (task.with_options(**overrides) if overrides else task)
    seed = sample_seed(spec.name, length, index, base_seed)
    draw = _Draw(spec, seed)
    chat = use_chat(spec.chat, tokenizer)
    caps = [1.0, 1.0]  # depth caps: for every needle, and for needles asked in later turns
    for _ in range(12):
        sample = _fit(draw, spec, length, index, tuple(caps), tokenizer, chat)
        window = spec.recency_window if spec.split == "clean" else 0
        limits = (sample.prompt_tokens - spec.recent_free_tokens, sample.prompt_tokens - max(window, spec.recent_free_tokens))
        later = [any(t > 0 for t in n.turns) for n in sample.needles]
        late = [[j for j, n in enumerate(sample.needles) if n.token_end > limits[0]],
                [j for j, n in enumerate(sample.needles) if later[j] and n.token_end > limits[1]]]
        if not late[0] and not late[1]:
            warn_if_repeated(draw.haystack, sample.num_units, spec.name)
            return sample
        # Caps act on drawn depths (fractions of haystack characters): move each offending needle's
        # drawn depth back by its overshoot plus one unit, and refit.
        unit = 1 / max(sample.num_units, 1)
        for j in sorted(set(late[0]) | set(late[1])):
            n, c = sample.needles[j], int(later[j])
            placed = min(draw.depths[j], caps[c])
            caps[c] = min(caps[c], max(0.0, placed - (n.token_end - limits[c]) / sample.prompt_tokens - unit))
        caps[1] = min(caps[1], caps[0])
    raise LengthError(f"{spec.name}: could not keep needles out of the last tokens at length {length}")


def _fit(draw, spec, length, index, caps, tokenizer, chat) -> Sample:
    """Largest haystack whose rendered sample fits the budget (binary search on units)."""
    fits = lambda n: _build(draw, spec, spec.name, length, index, n, caps, tokenizer, chat)  # noqa: E731
    smallest = fits(0)
    if smallest.total_tokens > length:
        raise LengthError(
            f"{spec.name}: length {length} is too short: needles, questions and {spec.answer_tokens} answer tokens "
            f"per turn already take {smallest.total_tokens} tokens"
        )
    lo, hi, best = 0, 1, smallest
    while True:  # grow until over budget
        s = fits(hi)
        if s.total_tokens > length:
            break
        lo, best, hi = hi, s, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        s = fits(mid)
        if s.total_tokens <= length:
            lo, best = mid, s
        else:
            hi = mid
    return best


def generate_many(task: str | TaskSpec, length: int, num_samples: int, tokenizer, base_seed: int = 0, progress: bool = False, **overrides):
    indices = range(num_samples)
    if progress:
        from tqdm import tqdm

        indices = tqdm(indices, desc=f"{task if isinstance(task, str) else task.name} @ {length}", unit="sample")
    for i in indices:
        yield generate(task, length, i, tokenizer, base_seed, **overrides)
