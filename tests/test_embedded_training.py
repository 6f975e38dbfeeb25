import json

import torch

from idlekv.embedded.data import Curriculum, conversation, training_batch
from idlekv.embedded.tokenizer import build_tokenizer, single_token_fraction
from idlekv.embedded.train import TrainConfig, train
from idlekv.models import load_model
from ruler import generate


def tiny_config(tmp_path, **overrides) -> TrainConfig:
    base = dict(
        out_dir=str(tmp_path / "model"), work_dir=str(tmp_path / "work"), layers=1, hidden=32, heads=2, kv_heads=1,
        intermediate=64, steps=12, tokens_per_step=1024, warmup=2, lr=3e-3, eval_every=4, eval_samples=2,
        checkpoint_every=4, threads=1, bf16=False,
        curriculum=Curriculum(min_length=160, max_length=256, needle_counts=(2,)),
    )
    base.update(overrides)
    return TrainConfig(**base)


def test_tokenizer_makes_every_key_one_token():
    assert single_token_fraction(build_tokenizer()) == 1.0


def test_training_conversations_hold_the_gold_answers():
    tok = build_tokenizer()
    sample = generate("mq_niah_4q_embedded", 512, 0, tok)
    ids, mask, ranges = conversation(sample, tok, "keyed")
    assert len(ranges) == 2 and len(ids) == len(mask)
    for turn, (a, b) in zip(sample.turns, ranges):
        answer = tok.decode(ids[a:b])
        assert all(f"{k}: {v}" in answer for k, v in zip(turn.keys, turn.outputs))
        assert all(m == 1.0 for m in mask[a:b])
    x1, w1 = training_batch(Curriculum(), tok, 5, 100, 2048, seed=0)
    x2, w2 = training_batch(Curriculum(), tok, 5, 100, 2048, seed=0)
    assert torch.equal(x1, x2) and torch.equal(w1, w2)  # batch t is a pure function of (seed, t)


def test_loss_falls_and_the_model_loads_through_the_project_loader(tmp_path):
    out = train(tiny_config(tmp_path), progress=False)
    record = json.loads((out / "training_record.json").read_text())
    losses = [entry["loss"] for entry in record["log"]]
    assert losses[-1] < losses[0] - 0.5
    lm = load_model(out, device="cpu")
    assert lm.spec.family == "llama" and lm.spec.num_layers == 1 and lm.tokenizer is not None
    assert record["steps"] == 12 and record["tokens_seen"] > 0


def test_an_interrupted_run_resumes(tmp_path):
    first = json.loads((train(tiny_config(tmp_path, max_minutes=0.0), progress=False) / "training_record.json").read_text())
    assert first["steps"] == 1
    second = json.loads((train(tiny_config(tmp_path), progress=False) / "training_record.json").read_text())
    assert second["steps"] == 12 and second["log"][0]["step"] == 4


def test_answer_formats():
    from ruler.sample import Turn

    turn = Turn("q", "p", ["falcon", "heron"], ["1234", "5678"])
    assert turn.gold_answer("values") == " 1234, 5678."
    assert turn.gold_answer("keyed") == " falcon: 1234, heron: 5678."
    assert turn.gold_answer("mirror") == " falcon is: 1234, heron is: 5678."
    assert turn.gold_answer("tagged") == " falcon1234, heron5678."


def test_a_run_can_start_from_another_runs_weights(tmp_path):
    from safetensors.torch import load_file

    train(tiny_config(tmp_path / "a", steps=4), progress=False)
    ckpt = tmp_path / "a" / "work" / "checkpoint.pt"
    source = torch.load(ckpt, weights_only=False)["model"]
    # stop_after=0: the run loads the weights and exports them untouched
    cfg = tiny_config(tmp_path / "b", steps=4, init_from=str(ckpt), stop_after=0,
                      curriculum=Curriculum(min_length=160, max_length=256, needle_counts=(2,), answer_format="mirror"))
    exported = load_file(train(cfg, progress=False) / "model.safetensors")
    fresh = load_file(train(tiny_config(tmp_path / "c", steps=4, stop_after=0, seed=9), progress=False) / "model.safetensors")
    name = "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(exported[name], source[name])
    assert not torch.equal(fresh[name], source[name])


def test_auxiliary_rows_target_what_they_say():
    import random

    from idlekv.embedded.data import echo_sequence, key_copy_sequence, pair_recall_sequence

    tok = build_tokenizer()
    # Recall listings find needles joined inline by a noise haystack; targets are their values.
    sample = generate("mq_niah_4q_embedded", 512, 0, tok)
    ids, mask = echo_sequence(sample, tok, random.Random(0))
    targets = tok.decode([i for i, m in zip(ids, mask) if m])
    assert sorted(targets.rstrip(".").split(".")) == sorted(n.value for n in sample.needles)
    # Pair recall: the second listing's values (and their full stops) are the only targets.
    ids, mask = pair_recall_sequence(tok, random.Random(1), 5, filler=1.0)
    assert "The grass is green." in tok.decode(ids) and sum(mask) == 5 * 5
    # Key copy: the answer's keys are the targets; their made-up values carry no loss (None).
    ids, mask = key_copy_sequence(tok, random.Random(2), blocks=3)
    text = tok.decode(ids)
    keys = [tok.decode([i]).strip() for i, m in zip(ids, mask) if m == 1.0]
    assert all(f"{k} is:" in text for k in keys) and None in mask
    # Tagged rows join key and value with nothing: the value is the key's very next token.
    ids, mask = pair_recall_sequence(tok, random.Random(1), 4, link="")
    starts = [i for i in range(1, len(ids)) if mask[i] and not mask[i - 1]]
    assert len(starts) == 4
    assert all(tok.decode([ids[i - 1]]).strip().isalpha() and tok.decode([ids[i]]).isdigit() for i in starts)
    ids, mask = key_copy_sequence(tok, random.Random(2), blocks=3, link="")
    assert " is:" not in tok.decode(ids)
    # RULER-needle recall listings (the recipe's stages 3-4) still find their needles.
    sample = generate("mq_niah_4q_embedded_ruler", 512, 0, tok)
    ids, mask = echo_sequence(sample, tok, random.Random(0))
    targets = tok.decode([i for i, m in zip(ids, mask) if m])
    assert sorted(targets.rstrip(".").split(".")) == sorted(n.value for n in sample.needles)
    cur = Curriculum(pairs_fraction=0.5, key_copy_fraction=0.3, pair_counts=(3,))
    x, w = training_batch(cur, tok, 3, 100, 2048, seed=0)
    assert (w > 0).any() and x.shape == w.shape


def test_distractor_needles_are_in_the_context_but_never_asked():
    import random

    from idlekv.embedded.data import training_sample

    tok = build_tokenizer()
    cur = Curriculum(needle_counts=(2,), distractor_counts=(3,), single_turn_probability=1.0)
    sample = training_sample(cur, tok, 600, random.Random(0))
    asked = {k for turn in sample.turns for k in turn.keys}
    assert len(sample.needles) == 5 and len(asked) == 2


def test_a_run_can_start_from_an_exported_model_folder(tmp_path):
    from safetensors.torch import load_file

    folder = train(tiny_config(tmp_path / "a", steps=4), progress=False)
    cfg = tiny_config(tmp_path / "b", steps=4, init_from=str(folder), stop_after=0,
                      curriculum=Curriculum(min_length=160, max_length=256, needle_counts=(2,), answer_format="mirror"))
    exported = load_file(train(cfg, progress=False) / "model.safetensors")
    source = load_file(folder / "model.safetensors")
    assert all(torch.equal(exported[name], source[name]) for name in source)


def test_a_variable_tracking_curriculum_trains_on_its_chains():
    import random

    from idlekv.embedded.data import training_sample

    tok = build_tokenizer()
    curriculum = Curriculum(task="vt_split", min_length=1400, max_length=2048, answer_format="values", eval_lengths=(2048, 1400))
    sample = training_sample(curriculum, tok, 1600, random.Random(0))
    assert sample.task == "vt_split" and sample.total_tokens <= 1600 and len(sample.turns) == 2
    ids, mask, ranges = conversation(sample, tok, "values")
    for turn, (a, b) in zip(sample.turns, ranges):
        answer = tok.decode(ids[a:b])
        assert all(name in answer for name in turn.outputs) and all(mask[i] == 1.0 for i in range(a, b))


def test_the_curve_of_chained_stages_counts_on_and_bounds_its_exact_rate(tmp_path):
    import csv

    from idlekv.embedded.curve import main as curve_main
    from idlekv.intervals import wilson

    first = train(tiny_config(tmp_path / "a"), progress=False)
    second = train(tiny_config(tmp_path / "b", init_from=str(first), steps=8), progress=False)
    out, figure = tmp_path / "curve.csv", tmp_path / "curve.png"
    assert curve_main([str(first), str(second / "training_record.json"), "--out", str(out), "--figure", str(figure)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert [int(r["total_step"]) for r in rows] == [4, 8, 12, 16, 20]  # stage b's steps 4 and 8 follow stage a's 12
    assert [r["stage"] for r in rows] == ["model"] * 5
    minutes = [float(r["total_minutes"]) for r in rows]
    assert minutes == sorted(minutes)
    for r in rows:
        assert float(r["heldout_exact_low"]) <= float(r["heldout_exact"]) <= float(r["heldout_exact_high"])
        assert int(r["heldout_n"]) == 2
        assert 0 <= float(r["first_turn_token_acc"]) <= 1  # two-turn held-out samples log their first turn too
    assert figure.stat().st_size > 0
    none_right = wilson(0, 16)
    assert none_right.mean == 0 and none_right.low == 0 and abs(none_right.high - 0.1936) < 1e-3  # the textbook 0/16
    half = wilson(8, 16)
    assert abs(half.low - 0.2800) < 1e-3 and abs(half.high - 0.7200) < 1e-3


def test_answer_items_are_scored_by_their_own_tokens(tmp_path):
    from idlekv.embedded.answer_items import item_shares, item_token_spans

    tok = build_tokenizer()
    sample = generate("vt_split", 1400, 0, tok)  # upper-case names: several tokens each
    turn = sample.turns[0]
    answer = turn.gold_answer("values")
    ids = tok(answer, add_special_tokens=False)["input_ids"]
    spans = item_token_spans(tok, answer, list(turn.outputs))
    assert [tok.decode([ids[i] for i in span]).strip() for span in spans] == list(turn.outputs)
    model = load_model(train(tiny_config(tmp_path, steps=2, eval_every=2, checkpoint_every=2), progress=False), device="cpu").model
    shares = item_shares(model, tok, [sample, generate("vt_split", 1400, 1, tok)])
    assert [(s.turn, s.item) for s in shares] == [(t, k) for t in range(2) for k in range(5)]
    assert all(s.n == 2 and s.low <= s.right <= s.high for s in shares)
