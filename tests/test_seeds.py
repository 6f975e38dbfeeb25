"""Knobs are tuned on a development seed and only the test seed is reported: a test fails if an
acceptance test, or a locked experiment, reads its development seed."""

import re
from pathlib import Path

import pytest

from idlekv.config import compose

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted(p.stem for p in (ROOT / "configs" / "experiment").glob("*.yaml"))
SPLIT = [name for name in EXPERIMENTS if "dev_seed" in compose([f"experiment={name}"]).phase]


def test_the_headline_experiments_name_both_seeds():
    assert {"phase03_repair_4q", "phase03_specificity_4q", "phase04_multiturn"} <= set(SPLIT)


@pytest.mark.parametrize("name", SPLIT)
def test_a_locked_experiment_reports_its_test_seed_not_its_development_seed(name):
    phase = compose([f"experiment={name}"]).phase
    assert phase.base_seed != phase.dev_seed, f"{name} reports the seed its knobs were tuned on"


def test_no_acceptance_test_reads_a_development_seed():
    dev_seeds = {compose([f"experiment={name}"]).phase.dev_seed for name in SPLIT}
    for test in ROOT.glob("phases/*/tests/test_acceptance*.py"):
        source = test.read_text()
        for seed in re.findall(r"base_seed[=:]\s*(\d+)", source):
            assert int(seed) not in dev_seeds, f"{test.name} reads development seed {seed}"
        for experiment in re.findall(r"experiment=(\w+)", source):
            phase = compose([f"experiment={experiment}"]).phase
            assert "dev_seed" in phase and phase.base_seed != phase.dev_seed, f"{test.name} runs {experiment} on its dev seed"
