"""Every number the paper's prose quotes, as a LaTeX macro computed from saved_results/ only.

    python paper/scripts/numbers.py [--saved saved_results] [--out paper/generated/numbers.tex]

QUOTES is the registry: each quote names a CSV, the line it reads and its column. A quote
`Name` defines \\Name (the mean), \\NameCI ("[low, high]", the 95% interval) and \\NameN (n).
main.tex types no result number: a test checks that it holds no decimal outside these macros.
"""

from __future__ import annotations

import sys
from pathlib import Path

# run as a script, this file's folder leads sys.path, and its name would shadow the standard `numbers`
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402

import pandas as pd  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Quote:
    name: str  # the macro, letters only
    csv: str  # a file in saved_results/
    where: dict = field(default_factory=dict)  # column -> value: must select exactly one line
    mean: str = "accuracy"  # the column of the value (pairs: "mean")
    n: str = "samples"  # the column of the sample count
    signed: bool = False  # a difference: written with its sign


def _summary(name, csv, **where):
    return Quote(name, csv, where)


def _pair(name, csv, **where):
    return Quote(name, csv, where, mean="mean", n="n", signed=True)


def _runtime(name, **where):
    """A phase07 cell: a timing's mean over repetitions (seconds) or a recall's mean over units, with n and its interval."""
    return Quote(name, "phase07_runtime.csv", where, mean="mean", n="n")


_4Q, _SPEC, _POL = "phase03_repair_4q.csv", "phase03_specificity_4q.csv", "phase06_policy_sensitivity_pairs.csv"
QUOTES = [
    _summary("FourQIdleKV", _4Q, condition="IdleKV", B=192, K=24),
    _summary("FourQKeptAnchors", _4Q, condition="IdleKV+kept-anchors", B=192, K=24),
    _summary("FourQMatched", _4Q, condition="Matched", B=192, K=24),
    _summary("FourQRandom", _4Q, condition="Random-K", B=192, K=24),
    _summary("FourQFull", _4Q, condition="Full", B=192, K=24),
    _summary("FourQSpanRefKeight", _4Q, condition="SpanRef-K", B=192, K=8),
    _pair("FourQGain", "phase03_repair_4q_pairs.csv", difference="IdleKV - Matched", B=192, K=24),
    _pair("FourQOldestMinusMatchedBig", "phase03_repair_4q_pairs.csv", difference="Oldest-K - Matched", B=256, K=24),
    _pair("FourQSeedTwoGain", "phase03_repair_4q_seed2_pairs.csv", difference="IdleKV - Matched", B=192, K=24),
    _summary("SnapMaxMatchedFirst", "phase03_repair_4q_snapkv.csv", condition="Matched", B=64, K=4),
    _summary("SnapMaxMatchedLast", "phase03_repair_4q_snapkv.csv", condition="Matched", B=64, K=24),
    _summary("SnapMaxRandomLast", "phase03_repair_4q_snapkv.csv", condition="Random-K", B=64, K=24),
    _pair("SnapMaxGain", "phase03_repair_4q_snapkv_pairs.csv", difference="IdleKV - Matched", B=64, K=24),
    _pair("TwoQGain", "phase03_repair_2q_pairs.csv", difference="IdleKV - Matched", B=192, K=12),
    _pair("EightQGain", "phase03_repair_8q_pairs.csv", difference="IdleKV - Matched", B=192, K=48),
    _summary("SpecWrongQ", _SPEC, condition="WrongQ-K", K=24),
    _summary("SpecStaleQ", _SPEC, condition="StaleQ-K", K=24),
    _summary("SpecProxyQ", _SPEC, condition="ProxyQ-K", K=24),
    _pair("SpecGainOverWrong", "phase03_specificity_4q_pairs.csv", difference="IdleKV - WrongQ-K", K=24),
    _pair("SpecProxyOverWrong", "phase03_specificity_4q_pairs.csv", difference="ProxyQ-K - WrongQ-K", K=24),
    _pair("NeedlesWrongOverMatched", "phase03_specificity_4q_needles_pairs.csv", difference="WrongQ-K - Matched", K=24),
    _pair("NeedlesStaleOverMatched", "phase03_specificity_4q_needles_pairs.csv", difference="StaleQ-K - Matched", K=24),
    _pair("NeedlesGainOverWrong", "phase03_specificity_4q_needles_pairs.csv", difference="IdleKV - WrongQ-K", K=24),
    _summary("NeedlesFull", "phase03_specificity_4q_needles.csv", condition="Full", K=24),
    _pair("RegimeGainFifty", "phase03_regime_4q_pairs.csv", difference="IdleKV - Matched", B=960, K=96),
    _pair("RegimeGainFive", "phase03_regime_4q_pairs.csv", difference="IdleKV - Matched", B=96, K=48),
    Quote("TurnsGain", "phase04_multiturn.csv", {"variant": "cumulative", "condition": "IdleKV - Matched", "turn": "2-5"}, n="n",
          signed=True),
    Quote("TurnsFullLast", "phase04_multiturn.csv", {"variant": "cumulative", "condition": "Full", "turn": "5"}, n="n"),
    _pair("PolicySnapKV", _POL, rule="snapkv", difference="IdleKV - Matched", K=24),
    _pair("PolicyStreaming", _POL, rule="streaming_llm", difference="IdleKV - Matched", K=24),
    _pair("PolicyHtwoO", _POL, rule="h2o", difference="IdleKV - Matched", K=24),
    _pair("PolicyAdaKV", _POL, rule="adakv", difference="IdleKV - Matched", K=24),
    Quote("RetentionSnapKV", "phase02_retention.csv", {"task": "mq_niah_4q", "mode": "aware", "rule": "snapkv", "budget_fraction": 0.1},
          n="n"),
    Quote("RetentionSnapKVMax", "phase02_retention.csv",
          {"task": "mq_niah_4q", "mode": "aware", "rule": "snapkv_max", "budget_fraction": 0.1}, n="n"),
    Quote("GateFourKeys", "phase01_full_cache.csv", {"task": "mq_niah", "num_keys": 4, "length": 2048}, n="n"),
    Quote("CheckRemoved", "embedded_model_check.csv", {"measure": "turn2_queried_removed"}, mean="mean", n="n"),
    Quote("CheckFull", "embedded_model_check.csv", {"measure": "turn2_full"}, mean="mean", n="n"),
    _pair("DigestGain", "phase03_repair_4q_digest_pairs.csv", difference="IdleKV-digest - IdleKV", B=192, K=24),
    _pair("DigestGainBig", "phase03_repair_4q_digest_pairs.csv", difference="IdleKV-digest - IdleKV", B=256, K=24),
    _runtime("EnvExactOneM", part="latency", stage="score", signal="exact", candidates=1 << 20),
    _runtime("EnvDigestOneM", part="latency", stage="score", signal="digest", candidates=1 << 20),
    _runtime("EnvPromoteOneM", part="latency", stage="promote", candidates=1 << 20, k=5000),
    _runtime("EnvTopKRecall", part="recall", stage="top_k", keys_model="rope", page_rows=16, kept_fraction=0.015625),
    _runtime("EnvPlantedRecall", part="recall", stage="planted", keys_model="rope", page_rows=16, kept_fraction=0.015625),
    _runtime("EnvNeedleRecall", part="recall", stage="needles", tier="embedded", page_rows=16, kept_fraction=0.03125),
    _runtime("EnvRepairExact", part="reprefill", stage="repair", signal="exact"),
    _runtime("EnvPrefill", part="reprefill", stage="prefill"),
]


def line_of(quote: Quote, saved: Path) -> pd.Series:
    frame = pd.read_csv(saved / quote.csv)
    for column, value in quote.where.items():
        frame = frame[frame[column].astype(str) == str(value)]
    if len(frame) != 1:
        raise ValueError(f"{quote.name}: {quote.csv} has {len(frame)} lines where {quote.where} (one expected)")
    return frame.iloc[0]


def _fmt(x: float, signed: bool) -> str:
    return f"{x:+.3f}" if signed else f"{x:.3f}"


def macros(saved: Path) -> str:
    lines = ["% generated by paper/scripts/numbers.py from saved_results/: do not edit"]
    for q in QUOTES:
        row = line_of(q, saved)
        lines.append(f"\\newcommand{{\\{q.name}}}{{{_fmt(row[q.mean], q.signed)}}}")
        lines.append(f"\\newcommand{{\\{q.name}CI}}{{[{_fmt(row['ci_low'], q.signed)}, {_fmt(row['ci_high'], q.signed)}]}}")
        lines.append(f"\\newcommand{{\\{q.name}N}}{{{int(row[q.n])}}}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--saved", default=str(ROOT / "saved_results"))
    parser.add_argument("--out", default=str(ROOT / "paper" / "generated" / "numbers.tex"))
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(macros(Path(args.saved)))
    print(f"wrote {out} ({len(QUOTES)} quotes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
