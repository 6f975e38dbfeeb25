"""Load local Hugging Face causal LMs (safetensors only) and describe their KV geometry.

Supported families are the GQA + RoPE decoders whose post-RoPE keys can be pruned and
resumed with explicit position ids: Llama, Qwen2, Qwen3, Mistral.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from idlekv.grouped_sdpa import register_grouped_sdpa

SUPPORTED_ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
    "MistralForCausalLM": "mistral",
}

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}

MODELS_README_HINT = (
    "Place a Hugging Face model folder (config.json, *.safetensors, tokenizer files) under "
    "models/<name>/, or run `make tiny-model` to train the project's embedded model."
)


@lru_cache(maxsize=None)
def _cache_argument(model_class) -> str:
    return "cache" if "cache" in inspect.signature(model_class.forward).parameters else "past_key_values"


def with_cache(model, cache) -> dict:
    """The forward's cache argument under the name this transformers release takes: `cache`
    (5.2x; `past_key_values` is deprecated there, gone in 5.40) or `past_key_values` (5.17)."""
    return {_cache_argument(type(model)): cache}


def returned_cache(output):
    """The cache a forward returned (`cache` in newer releases, `past_key_values` before)."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


class ModelLoadError(RuntimeError):
    """A model folder that cannot be used, with a message that says what to do."""


@dataclass(frozen=True)
class ModelSpec:
    """The KV geometry of a model: what one cached token costs and how heads group."""

    family: str
    num_layers: int
    num_query_heads: int
    num_kv_heads: int
    head_dim: int
    dtype: torch.dtype
    vocab_size: int
    max_position_embeddings: int

    @property
    def group_size(self) -> int:
        """Query heads per KV head (GQA)."""
        return self.num_query_heads // self.num_kv_heads

    @property
    def dtype_bytes(self) -> int:
        return torch.empty((), dtype=self.dtype).element_size()

    @property
    def bytes_per_kv_row(self) -> int:
        """Bytes of one token's keys and values over all layers and KV heads."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * self.dtype_bytes

    @classmethod
    def from_config(cls, config, dtype: torch.dtype) -> "ModelSpec":
        arch = (getattr(config, "architectures", None) or [""])[0]
        family = SUPPORTED_ARCHITECTURES.get(arch, getattr(config, "model_type", "unknown"))
        n_heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_heads
        return cls(
            family=family,
            num_layers=config.num_hidden_layers,
            num_query_heads=n_heads,
            num_kv_heads=getattr(config, "num_key_value_heads", None) or n_heads,
            head_dim=head_dim,
            dtype=dtype,
            vocab_size=config.vocab_size,
            max_position_embeddings=getattr(config, "max_position_embeddings", 0),
        )


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object | None
    spec: ModelSpec
    path: Path


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return DTYPES[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {sorted(DTYPES)}") from None


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def uses_sliding_window(config) -> bool:
    """True when some layer attends through a sliding window.

    Promoted rows are appended out of position order; a sliding-window mask is computed
    from cache indices, not positions, so it would cut the wrong rows.
    """
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None:
        return any(t != "full_attention" for t in layer_types)
    if getattr(config, "use_sliding_window", True) is False:
        return False
    return getattr(config, "sliding_window", None) is not None


def check_model_folder(path: str | Path, allow_bin_weights: bool = False) -> tuple[Path, dict]:
    """Validate a model folder before any heavy import; returns (path, config dict)."""
    path = Path(path)
    if not path.is_dir():
        raise ModelLoadError(f"model folder {path} does not exist. {MODELS_README_HINT}")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ModelLoadError(f"{path} has no config.json: it is not a Hugging Face model folder. {MODELS_README_HINT}")
    config = json.loads(config_file.read_text())
    if not list(path.glob("*.safetensors")):
        bins = [p.name for p in path.glob("*.bin")]
        detail = f" (found {', '.join(bins)}: convert them to safetensors)" if bins else ""
        if not (allow_bin_weights and bins):
            raise ModelLoadError(f"{path} holds no *.safetensors weights{detail}. Only safetensors are loaded.")
    archs = config.get("architectures") or []
    if not any(a in SUPPORTED_ARCHITECTURES for a in archs):
        raise ModelLoadError(
            f"{path}: architecture {archs or config.get('model_type')} is not supported; "
            f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    return path, config


def weights_fingerprint(path: str | Path, edge_bytes: int = 1 << 20) -> str:
    """A short hash of a model folder's weights: config.json, then each weights file's name,
    size, first and last `edge_bytes`. Cheap for a 15 GB model, and it changes when a model
    is retrained in place, so a resumable sweep does not mix rows of two models."""
    path = Path(path)
    digest = hashlib.sha256((path / "config.json").read_bytes())
    for file in sorted([*path.glob("*.safetensors"), *path.glob("*.bin")]):
        size = file.stat().st_size
        digest.update(f"{file.name}:{size}".encode())
        with open(file, "rb") as f:
            digest.update(f.read(edge_bytes))
            f.seek(max(0, size - edge_bytes))
            digest.update(f.read(edge_bytes))
    return digest.hexdigest()[:16]


def load_model(
    path: str | Path,
    dtype: str | torch.dtype = "float32",
    device: str | None = None,
    attn_implementation: str = "sdpa",
    trust_remote_code: bool = False,
    load_tokenizer: bool = True,
    allow_sliding_window: bool = False,
) -> LoadedModel:
    """Load a local causal LM folder in eval mode; never reaches a hub."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    path, folder_config = check_model_folder(path)
    if trust_remote_code and folder_config.get("auto_map"):
        raise ModelLoadError(f"{path}: trust_remote_code=true would run the folder's own modeling code ({folder_config['auto_map']}); "
                             f"the tiered cache needs the transformers implementation of {', '.join(SUPPORTED_ARCHITECTURES)}")
    torch_dtype = resolve_dtype(dtype)
    device = device or default_device()
    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code, local_files_only=True)
    if uses_sliding_window(config) and not allow_sliding_window:
        raise ModelLoadError(
            f"{path} uses sliding-window attention; repaired caches append rows out of order, which a "
            "sliding-window mask would cut wrongly. Set sliding_window to null in config.json "
            "(the cache then attends to all rows) or pass allow_sliding_window=True if you know why."
        )
    if attn_implementation == "sdpa":  # the same kernels, without copying keys per query head on the CPU
        attn_implementation = register_grouped_sdpa()
    model = AutoModelForCausalLM.from_pretrained(
        path,
        dtype=torch_dtype,
        attn_implementation=attn_implementation,
        trust_remote_code=trust_remote_code,
        use_safetensors=True,
        local_files_only=True,
    )
    model.to(device).eval()
    tokenizer = None
    has_tokenizer = (path / "tokenizer.json").is_file() or (path / "tokenizer_config.json").is_file()
    if load_tokenizer and has_tokenizer:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code, local_files_only=True)
    return LoadedModel(model=model, tokenizer=tokenizer, spec=ModelSpec.from_config(model.config, torch_dtype), path=path)
