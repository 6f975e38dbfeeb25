"""phase03's samples: the split options of the config, and distractor needles no turn asks about."""

from hydra import compose, initialize_config_dir

from idlekv.embedded.tokenizer import build_tokenizer
from phases.common import ROOT
from phases.phase03_repair.run import phase_sample


def phase_config(*overrides):
    with initialize_config_dir(str(ROOT / "configs"), version_base=None):
        return compose("config", overrides=["experiment=phase03_repair_4q", *overrides]).phase


def test_distractor_needles_are_in_the_context_but_asked_by_no_turn():
    tok = build_tokenizer()
    plain = phase_sample(phase_config(), "clean", 3, tok)
    more = phase_sample(phase_config("+phase.num_distractors=4"), "clean", 3, tok)
    assert len(plain.needles) == 4 and len(more.needles) == 8
    asked = [n for n in more.needles if n.turns]
    assert len(asked) == 4 and [len(more.needles_for_turn(t)) for t in (0, 1)] == [2, 2]
    assert all(len(turn.outputs) == 2 for turn in more.turns)
