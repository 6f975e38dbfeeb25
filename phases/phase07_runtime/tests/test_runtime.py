"""phase07 end to end at tiny sizes (the same code as make runtime), and the synthetic tiers it times."""

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from idlekv.bench.synthetic_tiers import Shape, page_digest, rope, synthetic_pause
from idlekv.repair.digest import DigestOptions, digest_rows
from idlekv.repair.scoring import score_rows

ROOT = Path(__file__).resolve().parents[3]
TINY = ["phase.candidates=[1024,2048]", "phase.ks=[8,16]", "phase.reps=2", "phase.tokens=8", "phase.active=256",
        "phase.recall.candidates=2048", "phase.recall.k=32", "phase.recall.page_rows=[16]", "phase.recall.kept_fractions=[0.125,1.0]",
        "phase.embedded.num_samples=2", "phase.embedded.length=640", "phase.embedded.budget=96", "phase.embedded.k=8",
        "phase.embedded.page_rows=[16]", "phase.embedded.kept_fractions=[0.25,1.0]", "phase.reprefill.length=640",
        "phase.reprefill.budget=96", "phase.reprefill.k=8", "phase.reprefill.reps=1", "phase.floor_bytes=1048576"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("phase07")
    done = subprocess.run([sys.executable, "-m", "phases.phase07_runtime.run", "experiment=phase07_runtime", f"hydra.run.dir={out}",
                           "device=cpu", *TINY], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def test_every_part_is_measured_and_every_ratio_reported(run_dir):
    summary = pd.read_csv(run_dir / "summary.csv")
    ratios = pd.read_csv(run_dir / "summary_ratios.csv")
    latency = summary[summary["part"] == "latency"]
    assert set(latency[latency["stage"] == "score"]["signal"]) == {"exact", "digest", "proxy"}
    assert set(latency[latency["stage"] == "promote"]["k"]) == {8, 16}
    assert (latency["n"][latency["stage"] == "score"] == 2).all() and (latency["p95"] >= latency["p50"]).all()
    assert set(ratios["ratio"]) >= {"exact score / digest score", "exact score / reading every warm key at memcpy rate",
                                    "promote / moving its bytes at memcpy rate", "exact score / digest score (same run)",
                                    "repair / re-prefill of the prompt"}
    assert set(ratios[ratios["ratio"] == "repair / re-prefill of the prompt"]["signal"]) == {"exact", "digest"}
    assert (run_dir / "figure.png").stat().st_size > 0


def test_reading_every_page_recalls_every_row(run_dir):
    summary = pd.read_csv(run_dir / "summary.csv")
    recall = summary[summary["part"] == "recall"]
    assert set(recall["tier"]) == {"qwen7b", "embedded"} and set(recall["stage"]) == {"top_k", "planted", "needles"}
    every = recall[recall["kept_fraction"] == 1.0]
    assert (every["mean"] == 1.0).all()  # all pages read: the digest is the exact signal (tests/test_digest.py)
    some = recall[(recall["kept_fraction"] < 1.0) & (recall["stage"] == "top_k")]
    assert ((some["mean"] >= 0) & (some["mean"] <= 1)).all() and (some["n"] > 1).all()


def test_a_resumed_run_measures_nothing_twice(run_dir):
    before = len(pd.read_csv(run_dir / "rows.csv"))
    done = subprocess.run([sys.executable, "-m", "phases.phase07_runtime.run", "experiment=phase07_runtime", f"hydra.run.dir={run_dir}",
                           "device=cpu", *TINY], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(pd.read_csv(run_dir / "rows.csv")) == before


def test_synthetic_tiers_alias_storage_but_not_what_a_layer_changes():
    pause = synthetic_pause(512, 64, 4, "rope", Shape(layers=3, query_heads=4, kv_heads=2, head_dim=16), reserve=8)
    cache = pause.cache
    assert cache.warm._k[0] is cache.warm._k[2] and cache.warm._present[0] is not cache.warm._present[1]
    slots, _ = cache.warm.candidates(0)
    cache.promote([slots[:, :, :8]] * 3)  # each layer marks its own rows absent, once
    assert all(cache.warm.candidates(layer)[0].shape[-1] == 512 - 8 for layer in range(3))
    cache.warm.digest = page_digest(cache, 16)
    exact, digest = score_rows(cache, pause.queries), digest_rows(cache, pause.queries, DigestOptions(16, 10_000))
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(exact.warm, digest.warm))
    assert len(pause.spans) and ((pause.spans[:, 1] - pause.spans[:, 0]) == 32).all()


def test_rope_rotates_pairs_by_position():
    x = torch.randn(3, 8)
    turned = rope(x, torch.tensor([0, 5, 9]))
    assert torch.allclose(turned[0], x[0]) and torch.allclose(turned.norm(dim=-1), x.norm(dim=-1), atol=1e-5)
