"""A training curve across chained stages: each stage's training_record.json read in order, one row per
held-out evaluation, steps and minutes counted on from the stages before (a stage initialised from
the previous one's export continues its curve). The exact-answer rate gets its n and a 95% Wilson
interval, which stays informative where every sample is wrong (a bootstrap of zeros is [0, 0]).

    python -m idlekv.embedded.curve models/embedded models/embedded_distractors --out curve.csv --figure curve.png
"""

from __future__ import annotations

import argparse
import csv
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from idlekv.intervals import wilson

NAN = float("nan")


@dataclass(frozen=True)
class CurvePoint:
    stage: str  # the stage's export folder name
    step: int  # within the stage
    total_step: int  # counted on from the stages before
    minutes: float  # wall minutes within the stage
    total_minutes: float
    tokens_per_step: int
    loss: float
    heldout_n: int  # held-out samples evaluated (teacher-forced) at eval_lengths[0]
    heldout_exact: float  # share of samples whose whole answer is right
    heldout_exact_low: float
    heldout_exact_high: float
    heldout_token_acc: float
    short_exact: float  # the same at eval_lengths[1]
    short_token_acc: float
    first_turn_exact: float  # a conversation's first turn at eval_lengths[0] (NaN where the stage did not log it)
    first_turn_token_acc: float


def read_record(path: Path) -> dict:
    """A training_record.json, given it or the model folder that holds it."""
    path = Path(path)
    return json.loads((path / "training_record.json" if path.is_dir() else path).read_text())


def curve(records: list[dict], names: list[str]) -> list[CurvePoint]:
    points, steps_before, minutes_before = [], 0, 0.0
    for record, name in zip(records, names):
        config = record["config"]
        n = config["eval_samples"]
        for entry in record["log"]:
            interval = wilson(round(entry["heldout_exact"] * n), n)
            points.append(CurvePoint(
                stage=name, step=entry["step"], total_step=steps_before + entry["step"], minutes=entry["minutes"],
                total_minutes=round(minutes_before + entry["minutes"], 2), tokens_per_step=config["tokens_per_step"],
                loss=entry["loss"], heldout_n=n, heldout_exact=entry["heldout_exact"],
                heldout_exact_low=round(interval.low, 4), heldout_exact_high=round(interval.high, 4),
                heldout_token_acc=round(entry["heldout_token_acc"], 4), short_exact=entry.get("short_exact", NAN),
                short_token_acc=round(entry.get("short_token_acc", NAN), 4),
                first_turn_exact=entry.get("first_turn_exact", NAN), first_turn_token_acc=round(entry.get("first_turn_token_acc", NAN), 4)))
        steps_before += record["steps"]
        minutes_before += record["train_seconds"] / 60
    return points


def write_csv(points: list[CurvePoint], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[x.name for x in fields(CurvePoint)])
        writer.writeheader()
        writer.writerows(asdict(p) for p in points)


def plot(points: list[CurvePoint], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [p.total_step for p in points]
    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3))
    left.plot(steps, [p.loss for p in points], color="k")
    left.set(xlabel="step (all stages)", ylabel="training loss (answer tokens)")
    right.plot(steps, [p.heldout_token_acc for p in points], label="token accuracy (last turn)")
    right.plot(steps, [p.first_turn_token_acc for p in points], label="token accuracy (first turn)")
    right.errorbar(steps, [p.heldout_exact for p in points], capsize=2, label=f"exact answers, last turn (n={points[0].heldout_n}, 95% Wilson)",
                   yerr=[[p.heldout_exact - p.heldout_exact_low for p in points], [p.heldout_exact_high - p.heldout_exact for p in points]])
    right.set(xlabel="step (all stages)", ylabel="held-out, teacher-forced", ylim=(0, 1))
    right.legend(fontsize=6, loc="upper left", framealpha=0.9)
    for p, q in zip(points, points[1:]):
        if q.step < p.step:  # the next stage began
            for axis in (left, right):
                axis.axvline(p.total_step, color="grey", lw=0.5, ls="--")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stages", nargs="+", help="model folders (or training_record.json files), in training order")
    parser.add_argument("--out", required=True, help="the curve as CSV")
    parser.add_argument("--figure", help="and as a PNG")
    args = parser.parse_args(argv)
    paths = [Path(s) for s in args.stages]
    points = curve([read_record(p) for p in paths], [p.name if p.is_dir() else p.parent.name for p in paths])
    write_csv(points, Path(args.out))
    if args.figure:
        plot(points, Path(args.figure))
    last = points[-1]
    print(f"{len(points)} evaluations over {last.total_step} steps, {last.total_minutes:.1f} min; last: loss {last.loss}, "
          f"exact {last.heldout_exact:.2f} [{last.heldout_exact_low:.2f}, {last.heldout_exact_high:.2f}] (n={last.heldout_n}), "
          f"token accuracy {last.heldout_token_acc:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
