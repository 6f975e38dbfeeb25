"""Every published experiment carries n and 95% intervals, keeps the per-sample rows beside it, and
re-derives from those rows exactly (python -m phases.publish --rederive <rows file>)."""

from pathlib import Path

import pandas as pd
import pytest

from idlekv.config import compose
from phases.publish import companion, rederive

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted(p.stem for p in (ROOT / "configs" / "experiment").glob("*.yaml"))
PUBLISHED = [name for name in EXPERIMENTS if (ROOT / compose([f"experiment={name}"]).phase.csv).is_file()]


def test_the_phases_are_published():
    assert {"phase01_full_cache", "phase03_repair_4q", "phase04_multiturn"} <= set(PUBLISHED)


@pytest.mark.parametrize("name", PUBLISHED)
def test_a_published_summary_has_n_and_an_interval(name):
    summary = pd.read_csv(ROOT / compose([f"experiment={name}"]).phase.csv)
    assert {"ci_low", "ci_high"} <= set(summary.columns)
    assert {"n", "samples"} & set(summary.columns)
    assert (summary["ci_low"] <= summary["ci_high"]).all()


@pytest.mark.parametrize("name", PUBLISHED)
def test_a_published_summary_re_derives_from_its_rows(name, capsys):
    rows = companion(ROOT / compose([f"experiment={name}"]).phase.csv, "rows")
    assert rows.is_file(), f"{name}: no per-sample rows at {rows.relative_to(ROOT)}"
    assert rows.stat().st_size < 3_000_000
    assert rederive(rows), capsys.readouterr().out


def test_rederiving_sees_a_changed_row(tmp_path):
    name = "phase01_full_cache"
    csv = ROOT / compose([f"experiment={name}"]).phase.csv
    rows = pd.read_csv(companion(csv, "rows"))
    rows.loc[0, "accuracy"] = 1.0 - rows.loc[0, "accuracy"]
    (tmp_path / "saved").mkdir()
    pd.read_csv(csv).to_csv(tmp_path / "saved" / csv.name, index=False)
    rows.to_csv(tmp_path / "saved" / f"{name}_rows.csv.gz", index=False)
    assert not rederive(tmp_path / "saved" / f"{name}_rows.csv.gz")
