import json

import pytest
import torch

from idlekv.grouped_sdpa import GROUPED_SDPA
from idlekv.models import ModelLoadError, load_model
from idlekv.tiny_models import FAMILIES, build_tiny_model


@pytest.mark.parametrize("family", FAMILIES)
def test_saved_tiny_model_loads_with_its_spec(family, tmp_path):
    built = build_tiny_model(family, tmp_path / family)
    loaded = load_model(tmp_path / family, dtype="float32", device="cpu")
    spec = loaded.spec
    assert (spec.family, spec.num_layers, spec.num_query_heads, spec.num_kv_heads, spec.head_dim) == (family, 2, 4, 2, 16)
    assert spec.group_size == 2 and spec.bytes_per_kv_row == 2 * 2 * 2 * 16 * 4
    assert loaded.model.config._attn_implementation == GROUPED_SDPA  # sdpa, keys grouped on the CPU
    ids = torch.randint(3, 128, (1, 12))
    assert torch.allclose(loaded.model(ids).logits, built(ids).logits, atol=1e-6)
    assert load_model(tmp_path / family, dtype="bf16", device="cpu").spec.bytes_per_kv_row == 2 * 2 * 2 * 16 * 2


def test_missing_folder_says_where_weights_go(tmp_path):
    with pytest.raises(ModelLoadError, match="make tiny-model"):
        load_model(tmp_path / "nope")


def test_bin_only_weights_are_refused(tmp_path):
    build_tiny_model("llama", tmp_path)
    for f in tmp_path.glob("*.safetensors"):
        f.rename(f.with_name("pytorch_model.bin"))
    with pytest.raises(ModelLoadError, match="no \\*.safetensors.*convert"):
        load_model(tmp_path)


def test_unsupported_architecture_is_named(tmp_path):
    build_tiny_model("llama", tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["architectures"] = ["GPT2LMHeadModel"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="GPT2LMHeadModel.*not supported"):
        load_model(tmp_path)


def test_sliding_window_is_refused_unless_allowed(tmp_path):
    build_tiny_model("mistral", tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["sliding_window"] = 16
    config.pop("layer_types", None)
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="sliding-window"):
        load_model(tmp_path, device="cpu")
    assert load_model(tmp_path, device="cpu", allow_sliding_window=True).spec.family == "mistral"


def test_weights_fingerprint_follows_the_weights(tmp_path):
    """A resumable phase locks this into its run folder: retraining a model in place must change it."""
    from safetensors.torch import load_file, save_file

    from idlekv.models import weights_fingerprint

    build_tiny_model("llama", tmp_path / "m")
    first = weights_fingerprint(tmp_path / "m")
    assert weights_fingerprint(tmp_path / "m") == first
    weights = tmp_path / "m" / "model.safetensors"
    tensors = load_file(weights)
    name = sorted(tensors)[-1]
    tensors[name] = tensors[name] + 1.0
    save_file(tensors, weights, metadata={"format": "pt"})
    assert weights_fingerprint(tmp_path / "m") != first


def test_trust_remote_code_reaches_the_loader_and_custom_code_is_refused(tmp_path, monkeypatch):
    import json

    import pytest

    from idlekv.config import compose
    from idlekv.models import ModelLoadError, load_model
    from phases import common

    seen = {}
    monkeypatch.setattr(common, "load_model", lambda *a, **kw: seen.update(kw) or (_ for _ in ()).throw(RuntimeError("stop")))
    with pytest.raises(RuntimeError, match="stop"):
        common.load_phase_model(compose(["experiment=phase03_repair_4q", "model.trust_remote_code=true"]), "phase03")
    assert seen["trust_remote_code"] is True
    folder = tmp_path / "custom"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "auto_map": {"AutoModel": "x.Y"}}))
    (folder / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="own modeling code"):
        load_model(folder, trust_remote_code=True)
