"""phase01 end to end on a random tiny model: cells, resume, CSV and figure."""

import pandas as pd

from idlekv.config import compose
from phases.phase01_full_cache.run import run


def test_phase01_runs_resumes_and_reports(tiny_model_dir, tmp_path):
    model_dir = tiny_model_dir
    cfg = compose([
        "experiment=phase01_full_cache", f"model.path={model_dir}", "device=cpu",
        "phase.lengths=[384]", "phase.num_samples=2", "phase.max_new_tokens=4",
        "phase.tasks=[{label:mq,name:mq_niah_4q_embedded,num_keys:[2,4],options:{}}]",
        f"phase.csv={tmp_path / 'phase01.csv'}", f"phase.figure={tmp_path / 'phase01.png'}",
    ])
    csv = run(cfg, tmp_path / "run")
    summary = pd.read_csv(csv)
    assert list(summary["num_keys"]) == [2, 4] and list(summary["n"]) == [2, 2]
    assert summary["accuracy"].between(0, 1).all()
    assert (summary["ci_low"] <= summary["accuracy"]).all() and (summary["accuracy"] <= summary["ci_high"]).all()
    assert len(pd.read_csv(tmp_path / "run" / "summary_rows.csv.gz")) == 4  # the per-sample rows beside the summary
    assert (tmp_path / "run" / "figure.png").stat().st_size > 0
    assert not (tmp_path / "phase01.csv").exists()  # nothing is published unless asked
    rows = (tmp_path / "run" / "rows.jsonl").read_text().splitlines()
    assert len(rows) == 4
    run(cfg, tmp_path / "run")  # a rerun finds every cell done
    assert (tmp_path / "run" / "rows.jsonl").read_text().splitlines() == rows
