"""Turn a sample into the text and tokens a model sees: the prompt (prefilled once) and
each turn, rendered with the tokenizer's chat template when it has one, a plain-text turn
format otherwise. Token spans of the needles are computed on the rendered prompt.

A chat conversation is rendered once, with a sentinel in place of every message's content:
the template's own frames (headers, end-of-turn markers, system prompt) are what lies
between the sentinels, so no turn depends on a generated answer and nothing is found by
searching for content that a template may have trimmed (Llama-3.1's trims every message).
"""

from __future__ import annotations

import bisect
import itertools
import re
from dataclasses import dataclass

from ruler.sample import Sample

PLAIN_TURN_SEPARATOR = "\n\n"  # plain format: a later turn follows the previous answer after a blank line
_SENTINEL = "\ue000{}\ue001"  # private-use characters: no template trims or escapes them
_SENTINEL_RE = re.compile("\ue000[0-9]+\ue001")
_PAD = " \n "


@dataclass
class Rendered:
    prompt_text: str  # what is prefilled once (chat header + instruction + context)
    prompt_offset: int  # where Sample.prompt starts inside prompt_text (negative if the template trimmed its start)
    turn_texts: list[str]  # turn 1: question + answer prefix; turn k: turn header + question + prefix


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def use_chat(sample_or_flag, tokenizer) -> bool:
    flag = sample_or_flag.chat if isinstance(sample_or_flag, Sample) else sample_or_flag
    return has_chat_template(tokenizer) if flag is None else bool(flag)


def _template(tokenizer, messages, generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def _conversation(turns: int) -> list[dict]:
    """user, assistant, user, ..., user: one sentinel per message."""
    return [{"role": "user" if i % 2 == 0 else "assistant", "content": _SENTINEL.format(i)} for i in range(2 * turns - 1)]


def content_strips(tokenizer) -> bool:
    """Whether the template strips whitespace around a message's content (Llama-3.1: `| trim`)."""
    marker = _SENTINEL.format(0)
    out = _template(tokenizer, [{"role": "user", "content": _PAD + marker + _PAD}], True)
    if _PAD + marker + _PAD in out:
        return False
    if marker in out and _PAD + marker not in out and marker + _PAD not in out:
        return True
    raise ValueError("the chat template rewrites message content beyond trimming; cannot render turns")


def chat_frames(tokenizer, turns: int) -> list[str]:
    """The template's text around each message of a `turns`-turn conversation: frames[i] precedes
    message i, frames[-1] is the generation prompt after the last question.

    Refuses templates that re-render earlier turns (a turn must extend the text before it)."""
    messages = _conversation(turns)
    full = _template(tokenizer, messages, True)
    frames = _SENTINEL_RE.split(full)
    if len(frames) != len(messages) + 1 or _SENTINEL_RE.findall(full) != [m["content"] for m in messages]:
        raise ValueError("the chat template does not render each message once, in order; cannot render turns")
    for end in range(1, len(messages)):
        partial = _template(tokenizer, messages[:end], messages[end - 1]["role"] == "user")
        if not full.startswith(partial):
            raise ValueError("the chat template re-renders earlier turns; cannot append a turn incrementally")
    return frames


def render(sample: Sample, tokenizer, chat: bool | None = None) -> Rendered:
    """Render every turn once; a later turn's text starts right after the model's answer to the one before."""
    chat = use_chat(sample.chat if chat is None else chat, tokenizer)
    first = sample.turns[0]
    if not chat:
        texts = [first.question + first.answer_prefix]
        texts += [PLAIN_TURN_SEPARATOR + t.question + t.answer_prefix for t in sample.turns[1:]]
        return Rendered(sample.prompt, 0, texts)
    frames, strips = chat_frames(tokenizer, len(sample.turns)), content_strips(tokenizer)
    content = sample.prompt + first.question
    lead = len(content) - len(content.lstrip()) if strips else 0
    if lead >= len(sample.prompt):
        raise ValueError("the sample's prompt is only whitespace")
    content = content.strip() if strips else content
    split = len(sample.prompt) - lead
    texts = [content[split:] + frames[1] + first.answer_prefix]
    for k, turn in enumerate(sample.turns[1:], start=1):
        question = turn.question.strip() if strips else turn.question
        texts.append(frames[2 * k] + question + frames[2 * k + 1] + turn.answer_prefix)
    return Rendered(frames[0] + content[:split], len(frames[0]) - lead, texts)


def encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def annotate_tokens(sample: Sample, tokenizer, rendered: Rendered | None = None) -> list[int]:
    """Token ids of the prompt; fills each needle's token and value-token spans and depth."""
    rendered = rendered or render(sample, tokenizer)
    enc = tokenizer(rendered.prompt_text, add_special_tokens=False, return_offsets_mapping=True)
    ids, spans = enc["input_ids"], TokenSpans(enc["offset_mapping"])
    for needle in sample.needles:
        a, b = needle.start + rendered.prompt_offset, needle.end + rendered.prompt_offset
        needle.token_start, needle.token_end = spans.cover(a, b)
        va, vb = needle.value_start + rendered.prompt_offset, needle.value_end + rendered.prompt_offset
        needle.value_token_start, needle.value_token_end = spans.cover(va, vb)
        ka = needle.start + needle.text.rindex(needle.key, 0, needle.value_start - needle.start) + rendered.prompt_offset
        needle.answer_token_start, needle.answer_token_end = spans.cover(min(ka, va), vb)
        needle.depth = needle.token_start / max(len(ids), 1)
    return ids


class TokenSpans:
    """Character offsets of a text's tokens, searched by bisection (thousands of spans per sample)."""

    def __init__(self, offsets):
        self.starts = [s for s, _ in offsets]
        self.ends = list(itertools.accumulate((e for _, e in offsets), max))  # running max: monotone for bisect

    def cover(self, start: int, end: int) -> tuple[int, int]:
        """Smallest token range [i, j) whose characters cover [start, end)."""
        i = bisect.bisect_right(self.ends, start)
        j = bisect.bisect_left(self.starts, end)
        if i >= len(self.starts) or j <= i:
            raise ValueError(f"characters [{start}, {end}) are covered by no token")
        return i, j


def char_span_to_tokens(offsets, start: int, end: int) -> tuple[int, int]:
    """Smallest token range [i, j) whose characters cover [start, end)."""
    return TokenSpans(offsets).cover(start, end)
