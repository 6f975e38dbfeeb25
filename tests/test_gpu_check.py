"""make gpu-check's quick mode: the same code as on a GPU, on whatever device this is, so it cannot rot."""

import json

from idlekv.bench.gpu_check import main


def test_gpu_check_quick_runs_every_part(tmp_path):
    out = tmp_path / "gpu_check.json"
    assert main(["--quick", "--strict", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert {"versions", "equality", "copies", "promote", "scoring", "engine", "memory", "runtime"} <= set(report)
    assert report["equality"]["cells_differing"] == 0 and report["equality"]["cells"] > 0
    assert report["equality"]["session_turns_differing"] == 0 and report["equality"]["session_turns"] == 1 * 2 * 5 * 5
    assert report["equality"]["score_max_rel_diff_tf32_off"] < 1e-5
    assert all(row["promote_ms"] > 0 for row in report["promote"])
    assert set(report["memory"]["families"]) == {"qwen2_5_7b_instruct", "llama3_1_8b_instruct"}
    compared = {row["ratio"] for row in report["runtime"]}
    assert {"exact score / digest score", "promote / moving its bytes at memcpy rate", "repair / re-prefill of the prompt"} <= compared
    assert (tmp_path / "gpu_check_runtime.csv").exists()
