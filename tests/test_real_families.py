"""Qwen2.5-7B-Instruct and Llama-3.1-8B-Instruct as a GPU user brings them: their real tokenizers
and chat templates, random weights in their published configs (layers shrunk), phase03 end to end."""

import pytest
import torch
from transformers import AutoTokenizer

from idlekv.families import REAL_FAMILIES, random_model
from idlekv.generation import end_token_ids, greedy_decode, stop_token_ids
from ruler import generate
from ruler.render import content_strips, render

END_TOKENS = {
    "qwen2_5_7b_instruct": {"<|im_end|>", "<|endoftext|>"},
    "llama3_1_8b_instruct": {"<|eot_id|>", "<|eom_id|>", "<|end_of_text|>"},
}


@pytest.fixture(scope="module", params=sorted(REAL_FAMILIES))
def family(request):
    fam = REAL_FAMILIES[request.param]
    return fam, AutoTokenizer.from_pretrained(fam.tokenizer_folder())


@pytest.fixture(scope="module")
def model(family):
    fam, _ = family
    return random_model(fam, 1, torch.bfloat16)


def test_tokenizers_are_the_families_own(family):
    fam, tok = family
    ids = tok("Hello world 1234567", add_special_tokens=False)["input_ids"]
    expected = {"qwen2_5_7b_instruct": [9707, 1879, 220, 16, 17, 18, 19, 20, 21, 22],  # Qwen: one token per digit
                "llama3_1_8b_instruct": [9906, 1917, 220, 4513, 10961, 22]}  # Llama-3: up to three digits a token
    assert ids == expected[fam.name]
    assert {tok.convert_ids_to_tokens(i) for i in end_token_ids(tok, type("M", (), {"generation_config": type(
        "G", (), {"eos_token_id": fam.generation_config()["eos_token_id"]})()})())} == END_TOKENS[fam.name]


def test_rendering_round_trips_under_the_official_template(family):
    """prompt + turn 1 + the model's answer + turn 2 is the template's own conversation; Llama-3.1 trims
    every message, so there the only difference is the whitespace the model generated itself."""
    fam, tok = family
    sample = generate("mq_niah_4q", 700, 0, tok)
    assert sample.chat
    r = render(sample, tok)
    answer = "1234567 and 7654321."
    ours = r.prompt_text + r.turn_texts[0] + answer + r.turn_texts[1]
    said = sample.turns[0].answer_prefix + answer
    messages = [{"role": "user", "content": sample.prompt + sample.turns[0].question},
                {"role": "assistant", "content": said}, {"role": "user", "content": sample.turns[1].question}]
    template = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) + sample.turns[1].answer_prefix
    assert content_strips(tok) == (fam.name == "llama3_1_8b_instruct")
    expected = template.replace(said.strip(), said) if content_strips(tok) else template
    assert ours == expected


def test_needle_spans_hold_inside_the_rendered_prompt(family):
    _, tok = family
    sample = generate("mq_niah_4q", 700, 1, tok)
    ids = tok(render(sample, tok).prompt_text, add_special_tokens=False)["input_ids"]
    for needle in sample.needles:
        assert needle.value in tok.decode(ids[needle.token_start : needle.token_end])


def test_answers_stop_at_every_end_token_of_the_family(family, model):
    fam, tok = family
    stops = stop_token_ids(tok, model)
    ends = {tok.convert_tokens_to_ids(t) for t in END_TOKENS[fam.name]}
    assert ends <= stops
    for end in sorted(ends):
        calls = []

        def force(module, args, output, end=end):  # the end token wins the first decoded step
            calls.append(1)
            output[..., end] = 1e4
            return output

        ids = torch.tensor([tok("a b c", add_special_tokens=False)["input_ids"]])
        out = model(ids, use_cache=True)
        first = torch.zeros(1, out.logits.shape[-1])
        first[0, 6] = 1.0  # the answer's first token
        handle = model.lm_head.register_forward_hook(force)
        try:
            answer = greedy_decode(model, out.past_key_values, first, ids.shape[1], 12, stops)[0]
        finally:
            handle.remove()
        assert answer == [6] and len(calls) == 1, f"{tok.convert_ids_to_tokens(end)} did not end the answer"


def test_phase03_end_to_end_with_every_condition(family, model):
    from idlekv.config import compose
    from idlekv.models import LoadedModel, ModelSpec
    from phases.phase03_repair.run import engine_from_config, phase_sample

    fam, tok = family
    cfg = compose(["experiment=phase03_repair_4q", "phase.task=mq_niah_4q", "phase.length=640", "phase.budgets=[96]",
                   "phase.ks=[8,16]", "phase.max_new_tokens=4", "repair.burst=[-2,20]", "repair.coverage_width=23"])
    lm = LoadedModel(model, tok, ModelSpec.from_config(model.config, torch.bfloat16), fam.tokenizer_folder())
    engine = engine_from_config(cfg, lm)
    sample = phase_sample(cfg.phase, "clean", 0, tok)
    rows = engine.run_sample(sample, {"task": cfg.phase.task, "split": "clean"}, wrong=phase_sample(cfg.phase, "clean", 1, tok))
    names = [c["name"] for c in cfg.repair.conditions]
    assert sorted({r["condition"] for r in rows}) == sorted(names)
    assert len(rows) == len(names) * 2
    for r in rows:
        expected = r["context_tokens"] + r["tail_rows"] if r["condition"] == "Full" else 96 + r["K"] + r["tail_rows"]
        assert r["active_rows"] == expected, r["condition"]
