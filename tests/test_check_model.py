"""make check-model is resumable: a second run finds its samples done and adds no row."""

import json

from idlekv.embedded.check import MEASURES, ROOT, check, summary


def test_check_model_resumes_its_rows_and_summarises_with_intervals(tmp_path):
    first, settings = check(ROOT / "models/embedded", samples=2, length=384, base_seed=2, max_new_tokens=8, run_dir=tmp_path)
    rows = (tmp_path / "rows.jsonl").read_text().splitlines()
    assert [json.loads(r)["index"] for r in rows] == [0, 1]
    again, _ = check(ROOT / "models/embedded", samples=2, length=384, base_seed=2, max_new_tokens=8, run_dir=tmp_path)
    assert (tmp_path / "rows.jsonl").read_text().splitlines() == rows and again.equals(first)
    table = summary(first, settings)
    assert list(table["measure"][: len(MEASURES)]) == list(MEASURES) and set(table["n"]) == {2}
    assert (table["ci_low"] <= table["mean"]).all() and (table["mean"] <= table["ci_high"]).all()
