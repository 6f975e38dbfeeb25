import pytest

from ruler.tokenizer import train_tokenizer

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="session")
def tokenizer():
    """The project's own BPE tokenizer, trained on generated text (no chat template)."""
    return train_tokenizer()


@pytest.fixture(scope="session")
def chat_tokenizer():
    return train_tokenizer(chat_template=CHATML)
