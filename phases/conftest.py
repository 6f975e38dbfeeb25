import pytest

from idlekv.embedded.tokenizer import build_tokenizer
from idlekv.tiny_models import build_tiny_model


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A random tiny Llama with the embedded tokenizer, saved as a model folder."""
    path = tmp_path_factory.mktemp("tiny_model")
    tok = build_tokenizer()
    build_tiny_model("llama", path, vocab_size=len(tok), max_position_embeddings=2048)
    tok.save_pretrained(path)
    return path
