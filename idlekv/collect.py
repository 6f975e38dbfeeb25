"""Merge the rows of a sweep's jobs into one result set (make collect PHASE=...).

Every job of a Hydra multirun writes its own rows (rows.jsonl) and locked config
(config.json) in its own folder. Collect finds them, refuses to merge jobs whose locked
configs differ in anything but the phase's grid keys (the swept axes), deduplicates rows
by cell key, reports the cells that each job's grid expects but no job wrote, and publishes
the phase's CSV and figure from the merged rows (phases/publish.py): only once no cell is
missing, unless --force.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

import pandas as pd

from idlekv.results import CONFIG_FILE, ROWS_FILE, ConfigMismatchError, ResultStore, cell_key, config_diff
from phases.publish import publish_rows

ROOT = Path(__file__).resolve().parents[1]


def _without(config: dict, dotted_keys) -> dict:
    config = json.loads(json.dumps(config))
    for dotted in dotted_keys:
        *parents, leaf = dotted.split(".")
        node = config
        for part in parents:
            node = node.get(part, {})
        node.pop(leaf, None)
    return config


def find_jobs(folders) -> list[Path]:
    jobs = []
    for folder in folders:
        jobs += sorted(p.parent for p in Path(folder).rglob(ROWS_FILE) if (p.parent / CONFIG_FILE).exists())
    return jobs


def collect(folders, write: bool = True, force: bool = False) -> dict:
    jobs = find_jobs(folders)
    if not jobs:
        raise SystemExit(f"no job folders with {ROWS_FILE} and {CONFIG_FILE} under {', '.join(map(str, folders))}")
    configs = {job: json.loads((job / CONFIG_FILE).read_text()) for job in jobs}
    first = configs[jobs[0]]
    module = importlib.import_module(first["phase"]["module"])
    grid = tuple(module.GRID_KEYS)
    reference = _without(first, grid)
    for job in jobs[1:]:
        diff = config_diff(reference, _without(configs[job], grid))
        if diff:
            raise ConfigMismatchError(f"{job} was run with another locked config than {jobs[0]}: " + "; ".join(diff[:10]))
    rows, seen, duplicates = [], set(), 0
    for job in jobs:
        # read as a resume would: a torn last line is left out (its cell is reported missing), any
        # other unreadable line stops here with its file and line, as it would stop the relaunch
        store = ResultStore(job, module.KEY_FIELDS, read_only=True)
        duplicates += store.duplicates_dropped
        for row in store.rows:
            key = cell_key(row, module.KEY_FIELDS)
            if key in seen:
                duplicates += 1
                continue
            seen.add(key)
            rows.append(row)
    expected = {cell_key(c, module.KEY_FIELDS) for job in jobs for c in module.expected_cells(configs[job])}
    missing = sorted(expected - seen)
    frame = pd.DataFrame(rows)
    outputs = publish_rows(module, frame, first, missing, force=True) if write and rows and (force or not missing) else []
    return {"jobs": len(jobs), "rows": len(rows), "duplicates_dropped": duplicates, "missing": missing,
            "frame": frame, "outputs": outputs, "key_fields": module.KEY_FIELDS}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", help="sweep folders (e.g. multirun/phase03_repair_4q) or run folders")
    parser.add_argument("--force", action="store_true", help="publish even while cells are missing")
    args = parser.parse_args(argv)
    result = collect(args.folders, force=args.force)
    print(f"merged {result['rows']} rows from {result['jobs']} jobs ({result['duplicates_dropped']} duplicates dropped)")
    for path in result["outputs"]:
        print(f"wrote {path}")
    if result["missing"]:
        fields = result["key_fields"]
        print(f"{len(result['missing'])} cells missing, so nothing was published (re-launch the same sweep command "
              "to resume them, or --force to publish a partial grid), e.g.:")
        for key in result["missing"][:10]:
            print("  " + ", ".join(f"{f}={json.loads(v)}" for f, v in zip(fields, key)))
        return 1
    print("no cell missing")
    return 0


if __name__ == "__main__":
    sys.exit(main())
