"""Which items of an answer a model has learned: teacher-forced, per turn and per item position.

A held-out exact rate or token accuracy averages over a conversation's turns and over the
answer's punctuation. A later turn can read its items off an earlier turn's gold answer (in
split-turn variable tracking, turn 2's names are the context's names that turn 1's answer did not
use), so this scores every item of every turn on its own: right when each of its tokens is the
model's argmax given the gold tokens before it. Shares carry n and a 95% Wilson interval.

    python -m idlekv.embedded.answer_items --model models/embedded_vt_words --task vt_split_embedded --length 1024
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch

from idlekv.embedded.data import conversation
from idlekv.intervals import wilson


@dataclass(frozen=True)
class ItemShare:
    turn: int
    item: int  # position in the answer, 0 first
    n: int
    right: float
    low: float
    high: float


def item_token_spans(tokenizer, answer: str, items: list[str]) -> list[list[int]]:
    """For each item, in order, the indices of the answer's tokens that overlap its characters."""
    offsets = tokenizer(answer, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    spans, cursor = [], 0
    for item in items:
        start = answer.index(item, cursor)
        end = cursor = start + len(item)
        spans.append([t for t, (a, b) in enumerate(offsets) if a < end and b > start])
    return spans


@torch.no_grad()
def item_shares(model, tokenizer, samples, answer_format: str = "values") -> list[ItemShare]:
    hits: dict[tuple[int, int], list[bool]] = defaultdict(list)
    for sample in samples:
        ids, _, ranges = conversation(sample, tokenizer, answer_format)
        predicted = model(torch.tensor([ids])).logits[0].argmax(-1)
        for t, (turn, (a, _)) in enumerate(zip(sample.turns, ranges)):
            spans = item_token_spans(tokenizer, turn.gold_answer(answer_format), list(turn.outputs))
            for k, span in enumerate(spans):
                hits[(t, k)].append(all(int(predicted[a + i - 1]) == ids[a + i] for i in span))
    out = []
    for (t, k), right in sorted(hits.items()):
        interval = wilson(sum(right), len(right))
        out.append(ItemShare(t, k, interval.n, interval.mean, interval.low, interval.high))
    return out


def main(argv: list[str] | None = None) -> int:
    from idlekv.models import load_model
    from ruler import generate

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--task", required=True)
    parser.add_argument("--length", type=int, default=1024)
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--base-seed", type=int, default=0, help="0 is the phases' development seed")
    parser.add_argument("--answer-format", default="values")
    parser.add_argument("--recency-window", type=int, default=0, help="> 0: phase03's clean split, later turns' rows out of the last N tokens")
    args = parser.parse_args(argv)
    lm = load_model(Path(args.model), device="cpu")
    split = {"split": "clean", "recency_window": args.recency_window} if args.recency_window else {}
    samples = [generate(args.task, args.length, i, lm.tokenizer, args.base_seed, **split) for i in range(args.samples)]
    print(f"{args.model} on {args.task} at {args.length} tokens, seed {args.base_seed}: each item right, teacher-forced")
    for share in item_shares(lm.model, lm.tokenizer, samples, args.answer_format):
        print(f"turn {share.turn + 1} item {share.item + 1}: {share.right:.2f} [{share.low:.2f}, {share.high:.2f}] (n={share.n})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
