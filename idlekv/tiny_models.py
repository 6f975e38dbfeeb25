"""Tiny randomly initialised models of each supported family, for tests and benchmarks."""

from __future__ import annotations

from pathlib import Path

import torch

FAMILIES = ("llama", "qwen2", "qwen3", "mistral")


def tiny_config(family: str, **overrides):
    """A small GQA + RoPE config of the family: 2 layers, 4 query heads, 2 KV heads."""
    from transformers import LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config

    common = dict(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    common.update(overrides)
    if family == "llama":
        return LlamaConfig(**common)
    if family == "qwen2":
        return Qwen2Config(use_sliding_window=False, **common)
    if family == "qwen3":
        common.setdefault("head_dim", common["hidden_size"] // common["num_attention_heads"])
        return Qwen3Config(use_sliding_window=False, **common)
    if family == "mistral":
        return MistralConfig(sliding_window=None, **common)
    raise ValueError(f"unknown family {family!r}; choose one of {FAMILIES}")


def build_tiny_model(family: str, path: str | Path | None = None, seed: int = 0, **overrides):
    """Build a random model of the family; save it as safetensors to `path` when given."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = tiny_config(family, **overrides)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.eval()
    if path is not None:
        model.save_pretrained(Path(path), safe_serialization=True)
    return model
