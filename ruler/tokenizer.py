"""Train a small byte-level BPE tokenizer on generated RULER text (for tests and the embedded model).

Byte-level: every string round-trips exactly; digits are split one per token so that a
value is a fixed number of tokens and a small model copies digit by digit.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from pathlib import Path

from ruler.haystacks import DEFAULT_ESSAY, essay_sentences
from ruler.keys import make_key, make_value
from ruler.templates import ANSWER_PREFIX, INSTRUCTION, NEEDLE, NOISE, ORDINAL_QUERY, ORDINALS, QUESTION

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>"]


def training_corpus(num_lines: int = 4000, seed: int = 0) -> Iterable[str]:
    rng = random.Random(seed)
    essay = essay_sentences(str(DEFAULT_ESSAY))
    for type_value in ("numbers", "uuids"):
        yield INSTRUCTION.format(type_value=type_value)
        yield ANSWER_PREFIX.format(type_value=type_value, query="x")
    for ordinal in ORDINALS:
        yield ORDINAL_QUERY.format(ordinal=ordinal)
    yield NOISE
    yield from essay
    for _ in range(num_lines):
        kind = rng.choice(["words", "numbers", "artifact", "uuids"])
        value_kind = rng.choice(["numbers", "uuids"])
        type_value = "numbers" if value_kind == "numbers" else "uuids"
        key = make_key(kind, rng)
        yield NEEDLE.format(type_value=type_value, key=key, value=make_value(value_kind, rng))
        yield QUESTION.format(type_value=type_value, query=key)


def train_tokenizer(vocab_size: int = 1024, texts: Iterable[str] | None = None, chat_template: str | None = None):
    """A PreTrainedTokenizerFast trained here, offline, in a second or two."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(texts if texts is not None else training_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    if chat_template:
        fast.chat_template = chat_template
    return fast


def save_tokenizer(tokenizer, path: str | Path) -> Path:
    path = Path(path)
    tokenizer.save_pretrained(path)
    return path
