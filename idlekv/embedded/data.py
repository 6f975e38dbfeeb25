"""Training batches for the embedded model, drawn from ruler's generators.

Each training sequence is a whole conversation as the model will see it at evaluation:
prompt, turn 1 (question + answer prefix), the gold answer, turn 2, its gold answer, EOS.
Answer tokens carry loss weight 1, everything else a small weight. Batch t is a pure
function of (seed, t), so a resumed run sees exactly the batches it would have seen.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from ruler.generation import _assemble, _Draw, _turns
from ruler.render import encode, render
from ruler.sample import Sample
from ruler.seeding import sample_seed
from ruler.tasks import get_task

NEEDLE_TOKENS = 17  # about one distractor needle of the embedded task, in tokens
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
    n = rng.choice(curriculum.needle_choices(step))
    single = rng.random() < curriculum.single_turn_probability or n < 2
    spec = get_task(curriculum.task, num_keys=n, num_queries=n, split="all" if single else "balanced")
    draw = _Draw(spec, rng.getrandbits(63))
    units = max(0, (target_length - OVERHEAD_TOKENS - NEEDLE_TOKENS * n) // NEEDLE_TOKENS)
    prompt, needles = _assemble(draw, units, 1.0, 1.0)
    return Sample(spec.name, target_length, 0, draw.seed, prompt, _turns(draw, needles), needles, spec.haystack, units)


def echo_sequence(sample: Sample, tokenizer, rng: random.Random) -> tuple[list[int], list[float]]:
    """The sample's prompt, then all its needles (haystack needles too) again in a shuffled order;
    the values of the second listing carry the loss."""
    ids = encode(tokenizer, sample.prompt)
    mask = [0.0] * len(ids)
    lines = [line for line in sample.prompt.splitlines() if line.startswith("One of the special magic")]
    rng.shuffle(lines)
    for line in lines:
        head, value = line.rsplit(" ", 1)
        part, target = encode(tokenizer, head + " "), encode(tokenizer, value + "\n")
        ids += part + target
        mask += [0.0] * len(part) + [1.0] * len(target)
    return ids, mask


def training_batch(curriculum: Curriculum, tokenizer, step: int, total_steps: int, tokens_per_step: int, seed: int):
    """(input_ids, loss_weights) for step `step`, right-padded; weights are 0 on padding."""
    rng = random.Random(sample_seed("embedded-train", step, 0, seed))
    low, high = curriculum.length_range(step, total_steps)
    target = rng.randint(low, high)
    answer_format = curriculum.answer_format or get_task(curriculum.task).answer_format
    rows = []
    for _ in range(max(1, tokens_per_step // target)):
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
