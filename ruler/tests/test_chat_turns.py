from ruler import generate
from ruler.render import render


def test_plain_turns_without_a_chat_template(tokenizer):
    s = generate("mq_niah_4q", 1024, 0, tokenizer)
    assert not s.chat
    r = render(s, tokenizer)
    assert r.prompt_text == s.prompt and r.turn_texts[0] == s.turns[0].question + s.turns[0].answer_prefix
    assert r.turn_texts[1].startswith("\n\n" + s.turns[1].question)


def test_chat_template_turns_are_real_turns(chat_tokenizer):
    s = generate("mq_niah_4q", 1024, 0, chat_tokenizer)
    assert s.chat
    r = render(s, chat_tokenizer)
    assert r.prompt_text.startswith("<|im_start|>user\n") and r.prompt_text.endswith(s.prompt)
    assert r.turn_texts[0] == s.turns[0].question + "<|im_end|>\n<|im_start|>assistant\n" + s.turns[0].answer_prefix
    assert r.turn_texts[1] == "<|im_end|>\n<|im_start|>user\n" + s.turns[1].question + "<|im_end|>\n<|im_start|>assistant\n" + s.turns[1].answer_prefix
    # the whole conversation equals the template applied to it at once
    messages = [
        {"role": "user", "content": s.prompt + s.turns[0].question},
        {"role": "assistant", "content": s.turns[0].answer_prefix + "1234567 and 7654321."},
        {"role": "user", "content": s.turns[1].question},
    ]
    whole = chat_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert r.prompt_text + r.turn_texts[0] + "1234567 and 7654321." + r.turn_texts[1] == whole + s.turns[1].answer_prefix


def test_spans_hold_inside_the_chat_prompt(chat_tokenizer):
    s = generate("mq_niah_2q", 1024, 3, chat_tokenizer)
    ids = chat_tokenizer(render(s, chat_tokenizer).prompt_text, add_special_tokens=False)["input_ids"]
    for n in s.needles:
        assert chat_tokenizer.decode(ids[n.token_start : n.token_end]).strip() == n.text


def test_render_refuses_templates_that_rewrite_history(chat_tokenizer):
    import pytest

    rewriting = "{{ messages | length }}{% for m in messages %}{{ m['content'] }}{% endfor %}"
    chat_tokenizer_copy = __import__("copy").deepcopy(chat_tokenizer)
    chat_tokenizer_copy.chat_template = rewriting
    with pytest.raises(ValueError, match="re-renders"):
        render(generate("mq_niah_4q", 1024, 0, chat_tokenizer_copy), chat_tokenizer_copy)
