"""phase02 end to end on a random tiny model: every rule, both modes, resume, CSV, figure."""

import pandas as pd
import pytest
import torch

from idlekv.config import compose
from idlekv.retention import RULES
from phases.phase02_retention.run import rule_configs, rule_names, run

# every rule of the experiment but those that read a trained probe (trained in their own test below)
RULES_WITHOUT_A_PROBE = "[" + ",".join(name for name in rule_names(compose(["experiment=phase02_retention"]).phase)
                                       if not RULES[rule_configs()[name]["name"]].needs_trained_probe) + "]"


def test_the_experiment_compares_every_configured_rule():
    names = rule_names(compose(["experiment=phase02_retention"]).phase)
    assert set(names) == set(rule_configs()) - {"keep_all"}
    assert {"snapkv", "snapkv_max", "tova", "keydiff", "pyramidkv", "adakv", "arkv"} <= set(names)


def test_phase02_runs_resumes_and_reports(tiny_model_dir, tmp_path):
    cfg = compose([
        "experiment=phase02_retention", f"model.path={tiny_model_dir}", "device=cpu",
        "phase.lengths=[256]", "phase.num_samples=1", "phase.max_new_tokens=3", "phase.budget_fractions=[0.25,0.5]",
        "phase.tasks=[{label:mq,name:mq_niah_4q_embedded,options:{split:all}}]", f"phase.rules={RULES_WITHOUT_A_PROBE}",
        f"phase.csv={tmp_path / 'phase02.csv'}", f"phase.figure={tmp_path / 'phase02.png'}",
    ])
    csv = run(cfg, tmp_path / "run")
    summary = pd.read_csv(csv)
    rules = len(cfg.phase.rules)
    assert len(summary) == 2 * (rules * 2 + 1)  # modes x (rules x fractions + keep_all)
    assert set(summary["mode"]) == {"aware", "agnostic"} and summary["accuracy"].between(0, 1).all()
    # Active bytes are measured from the tensors: kept rows x the row bytes of every (layer, KV head).
    full = summary[summary["rule"] == "keep_all"].iloc[0]
    half = summary[(summary["rule"] == "snapkv") & (summary["budget_fraction"] == 0.5)].iloc[0]
    assert half["active_bytes"] == pytest.approx(full["active_bytes"] * half["budget_rows"] / full["context_tokens"])
    assert (tmp_path / "run" / "figure.png").stat().st_size > 0
    assert not (tmp_path / "phase02.png").exists()  # nothing is published unless asked
    rows = (tmp_path / "run" / "rows.jsonl").read_text().splitlines()
    run(cfg, tmp_path / "run")  # a rerun finds every cell done
    assert (tmp_path / "run" / "rows.jsonl").read_text().splitlines() == rows


def test_phase02_refuses_an_unknown_rule_or_mode(tiny_model_dir, tmp_path):
    base = ["experiment=phase02_retention", f"model.path={tiny_model_dir}", "device=cpu", f"phase.csv={tmp_path / 'x.csv'}"]
    with pytest.raises(SystemExit, match="unknown rule 'nope'"):
        run(compose([*base, "phase.rules=[nope]"]), tmp_path / "a")
    with pytest.raises(SystemExit, match="not in"):
        run(compose([*base, "phase.modes=[sideways]"]), tmp_path / "b")


def test_phase02_reads_the_probe_trained_for_the_model(tiny_model_dir, tmp_path):
    import shutil

    from idlekv.models import load_model
    from idlekv.retention.probe_train import train_probe

    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    lm = load_model(model_dir, device="cpu")
    probe = train_probe(lm.model, lm.tokenizer, "mq_niah_4q_embedded", 256, 2, 1, epochs=20, progress=False)
    curve = probe.record["curves"][0]
    assert curve[-1]["loss"] < curve[0]["loss"]  # the fit makes progress on its own labels
    assert 0.0 <= probe.record["heldout"][0]["heldout_label_accuracy"] <= 1.0
    probe.save(model_dir / "relevance_probe.pt")
    cfg = compose([
        "experiment=phase02_retention", f"model.path={model_dir}", "device=cpu", "phase.lengths=[256]", "phase.num_samples=1",
        "phase.max_new_tokens=2", "phase.budget_fractions=[0.5]", "phase.modes=[aware]", "phase.rules=[learned_relevance]",
        "phase.tasks=[{label:mq,name:mq_niah_4q_embedded,options:{split:all}}]",
        f"phase.csv={tmp_path / 'p.csv'}", f"phase.figure={tmp_path / 'p.png'}",
    ])
    summary = pd.read_csv(run(cfg, tmp_path / "run"))
    assert set(summary["rule"]) == {"learned_relevance", "keep_all"}


def test_compressed_question_keeps_prefill_queries_only_when_asked(tiny_model_dir):
    from idlekv.compressed_answer import CompressedQuestion
    from idlekv.models import load_model
    from idlekv.retention import SnapKV
    from ruler import generate

    lm = load_model(tiny_model_dir, device="cpu")
    sample = generate("mq_niah_4q_embedded", 256, 0, lm.tokenizer, split="all")
    for aware in (True, False):
        full = CompressedQuestion(lm.model, lm.tokenizer, sample, aware, max_new_tokens=2)
        lean = CompressedQuestion(lm.model, lm.tokenizer, sample, aware, max_new_tokens=2, prefill_queries=False)
        # every query the prefill saw: the context's, and query-aware the question's (but its last token, fed after compression)
        seen = full.context_tokens + (len(full.inputs.window_positions) if aware else 0)
        assert lean.inputs.prefill_queries is None and full.inputs.prefill_queries[0].shape[1] == seen
        assert all(torch.equal(a, b) for a, b in zip(full.inputs.window_queries, lean.inputs.window_queries))
        rule = SnapKV(sinks=4, recent=8)
        assert [r["answer"] for r in full.answers(rule, [64])] == [r["answer"] for r in lean.answers(rule, [64])]


def test_phase03_reads_the_probe_trained_for_the_model_too(tmp_path):
    from phases.common import rule_for_model

    with pytest.raises(FileNotFoundError, match=str(tmp_path / "m" / "relevance_probe.pt")):
        rule_for_model({"name": "learned_relevance", "window": "answer", "path": None}, str(tmp_path / "m"))
    assert rule_for_model({"name": "snapkv", "window": "question", "sinks": 2}, "unused").sinks == 2
