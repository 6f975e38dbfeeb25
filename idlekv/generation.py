"""Greedy decoding over a (possibly pruned) KV cache, batched over rows.

Positions continue from the caller's `start_position` (the ORIGINAL sequence length),
not from the cache length, so pruned and repaired caches decode correctly.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from idlekv.models import with_cache


def end_token_ids(tokenizer, model=None) -> set[int]:
    """Every id that ends an answer: the tokenizer's eos and the model's generation and model
    configs' eos ids (Llama-3.1: <|eot_id|>, <|eom_id|>, <|end_of_text|>; Qwen2.5: <|im_end|>, <|endoftext|>)."""
    ids = {tokenizer.eos_token_id}
    for config in (getattr(model, "generation_config", None), getattr(model, "config", None)):
        eos = getattr(config, "eos_token_id", None)
        ids |= set(eos) if isinstance(eos, (list, tuple)) else {eos}
    return {int(i) for i in ids if i is not None}


def stop_token_ids(tokenizer, model=None, stop_on_newline: bool = True) -> set[int]:
    """End tokens (`end_token_ids`), plus every token whose text contains a newline."""
    ids = end_token_ids(tokenizer, model)
    if stop_on_newline:
        vocab = sorted(tokenizer.get_vocab().values())
        texts = tokenizer.batch_decode([[i] for i in vocab])
        ids |= {i for i, text in zip(vocab, texts) if "\n" in text}
    return ids


def answer_token_budget(tokenizer, gold_answer: str, floor: int, slack: float = 1.5) -> int:
    """New tokens to allow for an answer: `floor`, or more when the gold answer needs more of
    this tokenizer's tokens (Qwen writes a digit per token: 8 seven-digit values exceed 32)."""
    needed = len(tokenizer(gold_answer, add_special_tokens=False)["input_ids"])
    return max(floor, int(needed * slack) + 4)


@torch.no_grad()
def greedy_decode(
    model,
    past_key_values,
    last_logits: torch.Tensor,
    start_position: int | torch.Tensor,
    max_new_tokens: int,
    stop_ids: Iterable[int] = (),
    attention_mask: torch.Tensor | None = None,
    stats: dict | None = None,
) -> list[list[int]]:
    """Decode from `last_logits` (batch, vocab); returns each row's tokens up to (excluding) a stop id.

    `past_key_values` already holds the prompt; every row continues at `start_position`.
    `attention_mask` (batch, cached rows) hides padding rows of a padded batch; it grows by
    one visible column per decoded token. `stats["fed"]`, when given, receives how many decoded
    tokens were fed back (the rows each row's cache gained beyond the prompt).
    """
    stop = torch.tensor(sorted(set(stop_ids)), dtype=torch.long, device=last_logits.device)
    batch = last_logits.shape[0]
    done = torch.zeros(batch, dtype=torch.bool, device=last_logits.device)
    tokens, kept = [], []  # per step: (batch,) tokens and whether each row still wants them
    logits = last_logits
    position = torch.as_tensor(start_position, device=last_logits.device).reshape(-1, 1).expand(batch, 1)
    fed = 0
    for step in range(max_new_tokens):
        token = logits.argmax(-1)
        hit = torch.isin(token, stop) if stop.numel() else torch.zeros_like(done)
        tokens.append(token)
        kept.append(~done & ~hit)
        done |= hit
        if bool(done.all()) or step == max_new_tokens - 1:
            break
        if attention_mask is not None:
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones(batch, 1)], dim=1)
        logits = model(token[:, None], **with_cache(model, past_key_values), position_ids=position + step,
                       attention_mask=attention_mask, use_cache=True).logits[:, -1]
        fed += 1
    if stats is not None:
        stats["fed"] = fed
    if not tokens:
        return [[] for _ in range(batch)]
    ids, keep = torch.stack(tokens, 1).tolist(), torch.stack(kept, 1).tolist()
    return [[t for t, k in zip(row, mask) if k] for row, mask in zip(ids, keep)]


@torch.no_grad()
def run_turn(model, cache, turn_ids: list[int], max_new_tokens: int, stop_ids: Iterable[int]) -> list[int]:
    """Prefill a turn's tokens over a TieredCache (or MixedPrecisionCache), decode the answer greedily, keep both in
    the cache. A TieredCache takes the turn's and the answer's rows in place, in room made once beforehand."""
    hf = cache.to_hf(headroom=len(turn_ids) + max_new_tokens)
    ids = torch.tensor([turn_ids], device=cache.device)
    logits = model(ids, **with_cache(model, hf), position_ids=cache.position_ids(len(turn_ids)), use_cache=True,
                   logits_to_keep=1).logits[:, -1]
    cache.absorb(hf)  # the turn's rows, at positions continuing the original sequence
    answer = greedy_decode(model, hf, logits, cache.seen_tokens, max_new_tokens, stop_ids)[0]
    cache.absorb(hf)  # the answer's rows
    return answer


@torch.no_grad()
def resume_batch(model, caches, turn_ids: list[int], max_new_tokens: int, stop_ids: Iterable[int],
                 stats: dict | None = None) -> list[list[int]]:
    """Prefill the same turn over several caches of one sample as one batch and decode greedily.

    `caches`: a CacheBatch, or TieredCaches (padded and masked when their sizes differ). A single
    cache with room behind its rows resumes in place (its rows are not copied, nor changed).
    Each cache continues at its own position (answers of earlier turns may differ in length)."""
    from idlekv.cache.batch import CacheBatch, stack_to_hf

    headroom = len(turn_ids) + max_new_tokens
    if isinstance(caches, CacheBatch):
        (hf, mask), starts = caches.to_hf(), caches.starts()
    elif len(caches) == 1 and caches[0].active.capacity - caches[0].rows >= headroom and not caches[0].active.extra_rows:
        hf, mask = caches[0].to_hf(scratch=True), None
        starts = torch.tensor([caches[0].seen_tokens], device=caches[0].device)
    else:
        (hf, mask) = stack_to_hf(caches, headroom=headroom)
        starts = torch.tensor([c.seen_tokens for c in caches], device=caches[0].device)
    device, batch = hf.layers[0].keys.device, starts.shape[0]
    ids = torch.tensor([turn_ids], device=device).expand(batch, -1)
    positions = starts[:, None] + torch.arange(len(turn_ids), device=device)
    if mask is not None:
        mask = torch.cat([mask, mask.new_ones(batch, len(turn_ids))], dim=1)
    logits = model(ids, **with_cache(model, hf), position_ids=positions, attention_mask=mask, use_cache=True,
                   logits_to_keep=1).logits[:, -1]
    return greedy_decode(model, hf, logits, starts + len(turn_ids), max_new_tokens, stop_ids, attention_mask=mask, stats=stats)
