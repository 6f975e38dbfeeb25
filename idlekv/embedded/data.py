"""Training batches for the embedded model, drawn from ruler's generators.

A training row is one of: a whole conversation as the model sees it at evaluation (prompt,
turn 1, its gold answer, turn 2, its gold answer, EOS); a recall listing of the context's
needles (echo_sequence); dense "key is: value" pair recall (pair_recall_sequence); or
question/answer blocks that practise bringing the question's keys into the answer
(key_copy_sequence); the Curriculum sets their shares. Targets carry loss weight 1,
everything else a small weight. Batch t is a pure function of (seed, t), so a resumed run
sees exactly the batches it would have seen.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

import torch

from ruler.generation import NON_NIAH_TASKS, _assemble, _Draw, _turns, generate
from ruler.keys import make_value, word_list
from ruler.render import PLAIN_TURN_SEPARATOR, encode, render
from ruler.sample import Sample
from ruler.seeding import sample_seed
from ruler.tasks import get_task
from ruler.templates import ANSWER_LINKS, ANSWER_PREFIX, NOISE, QUESTION, join_queries

TRAINING_SEED = 7 * 10**6  # the base seed of training samples drawn from a task's own generator: disjoint from every eval's

# A needle as (the words before its value, the value), in either needle style; the first
# group keeps the space, if any, that separates the two.
NEEDLE_PATTERNS = (re.compile(r"(One of the special magic \w+ for \S+ is: )(\S+)\."),
                   re.compile(r"(One of the special magic \w+ is: [^\s\d]+)(\d+)\."))
NEEDLE_TOKENS = 17  # about one needle of the embedded task, in tokens
UNIT_TOKENS = {"needle": 17, "noise": 8, "essay": 25}  # about one haystack unit, in tokens
OVERHEAD_TOKENS = 120  # instruction, questions and answers of a sample, about


@dataclass(frozen=True)
class Curriculum:
    task: str = "mq_niah_4q_embedded"
    min_length: int = 192
    max_length: int = 2048
    ramp_fraction: float = 0.5  # the longest length is reached at this fraction of training
    needle_counts: tuple[int, ...] = (2, 3, 4, 6, 8)
    single_turn_probability: float = 0.2
    other_weight: float = 0.05
    answer_format: str | None = None  # override the task's answer format for training targets
    # Compact start: the first hold_steps draw lengths in [min_length, hold_length] and
    # hold_needle_counts needles, so the lookup is learned before the haystack grows.
    hold_steps: int = 0
    hold_length: int = 320
    hold_needle_counts: tuple[int, ...] = (2, 3, 4)
    # Auxiliary recall samples: after the needles, every needle of the context is listed again
    # in shuffled order and its value is the target, so each needle supervises the key lookup
    # that the answers need (associative recall in the task's own format).
    echo_fraction: float = 0.0
    # Dense pair recall (see pair_recall_sequence): this share of rows, with a pair count drawn
    # from pair_counts and noise sentences between pairs with probability pair_filler.
    pairs_fraction: float = 0.0
    pair_counts: tuple[int, ...] = (4, 8, 16)
    pair_filler: float = 0.0
    key_copy_fraction: float = 0.0  # this share of rows are key_copy_sequence blocks
    # Needles that no turn asks about, added to a conversation (drawn per sample), so that
    # questions ask a subset of the context's keys as the split turns do.
    distractor_counts: tuple[int, ...] = (0,)
    # held-out evaluation lengths (the main set, then a shorter one where progress shows first);
    # a task with a long fixed part (vt: its solved example) needs longer ones
    eval_lengths: tuple[int, int] = (1024, 320)

    def length_range(self, step: int, total_steps: int) -> tuple[int, int]:
        if step < self.hold_steps:
            return self.min_length, self.hold_length
        ramp = max(1.0, self.ramp_fraction * (total_steps - self.hold_steps))
        progress = min(1.0, (step - self.hold_steps) / ramp)
        start = self.hold_length if self.hold_steps else self.min_length
        return self.min_length, int(start + progress * (self.max_length - start))

    def needle_choices(self, step: int) -> tuple[int, ...]:
        return self.hold_needle_counts if step < self.hold_steps else self.needle_counts


def conversation(sample: Sample, tokenizer, answer_format: str) -> tuple[list[int], list[float], list[tuple[int, int]]]:
    """Token ids of a whole conversation, the answer mask, and each answer's token range."""
    rendered = render(sample, tokenizer)
    ids = encode(tokenizer, rendered.prompt_text)
    answer_mask = [0.0] * len(ids)
    ranges = []
    for turn, text in zip(sample.turns, rendered.turn_texts):
        part = encode(tokenizer, text)
        ids += part
        answer_mask += [0.0] * len(part)
        answer = encode(tokenizer, turn.gold_answer(answer_format))
        ranges.append((len(ids), len(ids) + len(answer)))
        ids += answer
        answer_mask += [1.0] * len(answer)
    ids.append(tokenizer.eos_token_id)
    answer_mask.append(1.0)
    return ids, answer_mask, ranges


def training_sample(curriculum: Curriculum, tokenizer, target_length: int, rng: random.Random, step: int = 10**9) -> Sample:
    if curriculum.task in NON_NIAH_TASKS:  # vt, cwe, fwe: their own generator, at the drawn length
        return generate(curriculum.task, target_length, rng.getrandbits(40), tokenizer, base_seed=TRAINING_SEED)
    n = rng.choice(curriculum.needle_choices(step))
    single = rng.random() < curriculum.single_turn_probability or n < 2
    extra = rng.choice(curriculum.distractor_counts)
    spec = get_task(curriculum.task, num_keys=n + extra, num_queries=n, split="all" if single else "balanced")
    draw = _Draw(spec, rng.getrandbits(63))
    units = max(0, (target_length - OVERHEAD_TOKENS - NEEDLE_TOKENS * (n + extra)) // UNIT_TOKENS[spec.haystack])
    prompt, needles = _assemble(draw, units, 1.0, 1.0)
    return Sample(spec.name, target_length, 0, draw.seed, prompt, _turns(draw, needles), needles, spec.haystack, units)


def echo_sequence(sample: Sample, tokenizer, rng: random.Random) -> tuple[list[int], list[float]]:
    """The sample's prompt, then all its needles (haystack needles too) again in a shuffled order;
    the values of the second listing carry the loss."""
    ids = encode(tokenizer, sample.prompt)
    mask = [0.0] * len(ids)
    # Needles anywhere in the context (a noise haystack joins them inline with spaces).
    found = [(m.start(), m.groups()) for pattern in NEEDLE_PATTERNS for m in pattern.finditer(sample.prompt)]
    lines = [groups for _, groups in sorted(found)]
    rng.shuffle(lines)
    for head, value in lines:
        part, target = encode(tokenizer, "\n" + head), encode(tokenizer, value + ".")
        ids += part + target
        mask += [0.0] * len(part) + [1.0] * len(target)
    return ids, mask


def pair_recall_sequence(tokenizer, rng: random.Random, pairs: int, filler: float = 0.0,
                         link: str = " is: ") -> tuple[list[int], list[float]]:
    """Dense associative recall in the needles' own local pattern: `pairs` lines "key{link}value."
    (noise sentences between them with probability `filler`), then the same lines shuffled,
    whose values are the targets. The lookup the answers need ("key is: " -> the digits that
    followed it) gets ~25% of the tokens as targets instead of ~1% in a long conversation."""
    keys = rng.sample(word_list(), pairs)
    values = [make_value("numbers", rng, 4) for _ in keys]
    noise = NOISE.split(". ")
    text = ""
    for key, value in zip(keys, values):
        if rng.random() < filler:
            text += " " + ". ".join(noise[: rng.randint(1, len(noise))]).rstrip(".") + "."
        text += f" {key}{link}{value}."
    ids = encode(tokenizer, text.strip() + "\n")
    mask = [0.0] * len(ids)
    order = list(range(pairs))
    rng.shuffle(order)
    for i in order:
        part, target = encode(tokenizer, f" {keys[i]}{link}"), encode(tokenizer, f"{values[i]}.")
        ids += part + target
        mask += [0.0] * len(part) + [1.0] * len(target)
    return ids, mask


def key_copy_sequence(tokenizer, rng: random.Random, blocks: int = 6, link: str = " is: ") -> tuple[list[int], list[float | None]]:
    """Question/answer blocks with no context: each question names 1-4 keys and the mirror answer
    repeats them in order. Only the answer's keys are targets (their values are unknown here and
    carry no loss): dense practice of bringing the question's keys to the answer, which whole
    conversations teach too rarely for the model to pick up."""
    ids: list[int] = []
    mask: list[float | None] = []
    for b in range(blocks):
        keys = rng.sample(word_list(), rng.choice((1, 2, 2, 3, 4)))
        question = (PLAIN_TURN_SEPARATOR if b else "") + QUESTION.format(type_value="numbers", query=join_queries(keys))
        part = encode(tokenizer, question + ANSWER_PREFIX.format(type_value="numbers", query=join_queries(keys)))
        ids += part
        mask += [0.0] * len(part)
        for i, key in enumerate(keys):
            k = encode(tokenizer, ("," if i else "") + f" {key}")
            v = encode(tokenizer, f"{link}{make_value('numbers', rng, 4)}")
            ids += k + v
            mask += [0.0] * (len(k) - 1) + [1.0] + [None] * len(v)
        ids += encode(tokenizer, ".")
        mask += [0.0]
    return ids, mask


def training_batch(curriculum: Curriculum, tokenizer, step: int, total_steps: int, tokens_per_step: int, seed: int):
    """(input_ids, loss_weights) for step `step`, right-padded; weights are 0 on padding."""
    rng = random.Random(sample_seed("embedded-train", step, 0, seed))
    low, high = curriculum.length_range(step, total_steps)
    target = rng.randint(low, high)
    answer_format = curriculum.answer_format or get_task(curriculum.task).answer_format
    link = ANSWER_LINKS.get(answer_format, " is: ")  # how the pair and key-copy rows join key and value
    rows = []
    for _ in range(max(1, tokens_per_step // target)):
        if rng.random() < curriculum.key_copy_fraction:
            ids, mask = key_copy_sequence(tokenizer, rng, link=link)
            rows.append((ids, [0.0 if m is None else 1.0 if m else curriculum.other_weight for m in mask]))
            continue
        if rng.random() < curriculum.pairs_fraction:
            ids, mask = pair_recall_sequence(tokenizer, rng, rng.choice(curriculum.pair_counts), curriculum.pair_filler, link)
            rows.append((ids, [1.0 if m else curriculum.other_weight for m in mask]))
            continue
        sample = training_sample(curriculum, tokenizer, target, rng, step)
        if rng.random() < curriculum.echo_fraction:
            ids, mask = echo_sequence(sample, tokenizer, rng)
        else:
            ids, mask, _ = conversation(sample, tokenizer, answer_format)
        rows.append((ids, [1.0 if m else curriculum.other_weight for m in mask]))
    width = max(len(r[0]) for r in rows)
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([r[0] + [pad] * (width - len(r[0])) for r in rows])
    weights = torch.tensor([r[1] + [0.0] * (width - len(r[1])) for r in rows])
    return input_ids, weights
