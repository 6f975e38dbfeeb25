"""python -m ruler: write a JSONL of samples for a named task and length.

  python -m ruler --task mq_niah_4q --length 2048 --num-samples 100 --tokenizer models/embedded --out data/mq4.jsonl
  python -m ruler --list
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ruler.generation import NON_NIAH_TASKS, LengthError, generate_many
from ruler.io import write_jsonl
from ruler.tasks import TASKS, get_task


def load_tokenizer(path: str | None):
    if path is None:
        from ruler.tokenizer import train_tokenizer

        print("no --tokenizer given: training the project's small BPE tokenizer (lengths are in its tokens)", file=sys.stderr)
        return train_tokenizer()
    from transformers import AutoTokenizer

    if not Path(path).exists():
        raise SystemExit(f"tokenizer folder {path} does not exist")
    return AutoTokenizer.from_pretrained(path, local_files_only=True)


def parse_value(text: str):
    import json

    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ruler", description="Generate RULER-compatible samples as JSONL.")
    parser.add_argument("--task", help=f"one of: {', '.join([*TASKS, *NON_NIAH_TASKS])}")
    parser.add_argument("--length", type=int, help="token budget of each sample")
    parser.add_argument("--num-samples", type=int, default=100)
    parser.add_argument("--tokenizer", help="a Hugging Face tokenizer/model folder (default: train the project's)")
    parser.add_argument("--seed", type=int, default=0, help="base seed")
    parser.add_argument("--out", help="output JSONL path")
    parser.add_argument("--set", nargs="*", default=[], metavar="OPTION=VALUE", help="task options, e.g. split=clean recency_window=256")
    parser.add_argument("--list", action="store_true", help="list the tasks and exit")
    args = parser.parse_args(argv)
    if args.list:
        for name, spec in TASKS.items():
            print(f"{name:18s} haystack={spec.haystack} keys={spec.key_kind}x{spec.num_keys} values={spec.value_kind}x{spec.num_values} queries={spec.num_queries} split={spec.split}")
        for name, spec in NON_NIAH_TASKS.items():
            print(f"{name:18s} {spec}")
        return 0
    if not (args.task and args.length and args.out):
        parser.error("--task, --length and --out are required (or --list)")
    overrides = {}
    for item in args.set:
        if "=" not in item:
            parser.error(f"--set expects OPTION=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        overrides[key] = parse_value(value)
    try:
        spec = NON_NIAH_TASKS[args.task].with_options(**overrides) if args.task in NON_NIAH_TASKS else get_task(args.task, **overrides)
    except ValueError as err:
        parser.error(str(err))
    tokenizer = load_tokenizer(args.tokenizer)
    try:
        count = write_jsonl(generate_many(spec, args.length, args.num_samples, tokenizer, args.seed, progress=True), args.out)
    except LengthError as err:
        raise SystemExit(str(err)) from None
    print(f"wrote {count} samples of {spec.name} at {args.length} tokens to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
