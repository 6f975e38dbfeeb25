"""make check-model: does the embedded model retrieve, and does it read the needle rows?

On held-out samples of the repair phase's setting (mq_niah_4q_embedded, split clean, at the
phase's length), answer turn 1 from the full cache, then turn 2 three ways: full cache,
with the turn-2 needles' rows removed from every layer, and with as many random haystack
rows removed. Prints and saves the fraction of turn-2 gold values recovered, each with n and a
95% bootstrap interval, the paired differences, and the per-sample rows beside the summary.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from idlekv.embedded.ablation import removal_hook
from idlekv.evaluation import answer_sample
from idlekv.models import load_model
from ruler import generate

ROOT = Path(__file__).resolve().parents[2]


def check(model_dir: Path, samples: int, length: int, base_seed: int, max_new_tokens: int, run_dir: Path):
    """Resumable: one row per sample in a result store under `run_dir` (locked to the model and settings)."""
    from idlekv.models import weights_fingerprint
    from idlekv.results import ResultStore

    lm = load_model(model_dir, device="cuda" if torch.cuda.is_available() else "cpu")
    shown = model_dir.relative_to(ROOT) if model_dir.is_relative_to(ROOT) else model_dir  # no machine path in saved_results
    settings = {"model": str(shown), "samples": samples, "length": length, "base_seed": base_seed}
    locked = {**settings, "max_new_tokens": max_new_tokens, "weights": weights_fingerprint(model_dir)}
    with ResultStore(run_dir, ("index",), config=locked) as store:
        for i in tqdm([i for i in range(samples) if not store.is_done({"index": i})], desc="check-model", unit="sample"):
            s = generate("mq_niah_4q_embedded", length, i, lm.tokenizer, base_seed, split="clean", recency_window=64)
            needle_rows = sum(n.token_end - n.token_start for n in s.needles)
            row = {"index": i, "haystack_share": 1 - needle_rows / s.prompt_tokens}
            for name, kind in (("full", "none"), ("queried_removed", "queried"), ("random_removed", "random")):
                results = answer_sample(lm.model, lm.tokenizer, s, max_new_tokens, removal_hook(kind, turn=1))
                row[f"turn2_{name}"] = results[1].accuracy
                if name == "full":
                    row["turn1_full"] = results[0].accuracy
            store.append(row)
        frame = store.to_frame()
    return frame, settings


MEASURES = ("turn2_full", "turn2_queried_removed", "turn2_random_removed", "turn1_full", "haystack_share")


def summary(frame, settings: dict):
    """One line per measure: n, the mean and its 95% bootstrap interval; then full minus each removal, paired."""
    import pandas as pd

    from idlekv.intervals import bootstrap, paired

    frame = frame.sort_values("index")
    lines = [{**settings, "measure": m, **_interval(bootstrap(frame[m].to_numpy()))} for m in MEASURES]
    for removed in ("turn2_queried_removed", "turn2_random_removed"):
        d = paired(frame["turn2_full"].to_numpy(), frame[removed].to_numpy())
        lines.append({**settings, "measure": f"turn2_full - {removed}", **_interval(d)})
    return pd.DataFrame(lines)


def _interval(i) -> dict:
    return {"n": i.n, "mean": round(i.mean, 4), "ci_low": round(i.low, 4), "ci_high": round(i.high, 4)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/embedded")
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--length", type=int, default=1024)
    parser.add_argument("--base-seed", type=int, default=2, help="held out: training draws from its own seed stream")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--run-dir", default="runs/check_model", help="the resumable rows of this check")
    parser.add_argument("--publish", action="store_true", help="also write saved_results/embedded_model_check.csv")
    args = parser.parse_args(argv)
    frame, settings = check(ROOT / args.model, args.samples, args.length, args.base_seed, args.max_new_tokens, ROOT / args.run_dir)
    table = summary(frame, settings)
    print(table[["measure", "n", "mean", "ci_low", "ci_high"]].to_string(index=False))
    from phases.publish import companion, write_tables

    outs = [ROOT / args.run_dir / "summary.csv"] + ([ROOT / "saved_results/embedded_model_check.csv"] if args.publish else [])
    for out in outs:
        for path in write_tables({out: table, companion(out, "rows"): frame.sort_values("index")}):
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
