"""Publishing a phase's results: the only way anything reaches saved_results/ and paper/figures/.

A run writes its rows, summary and figure under runs/ only. Publishing (`make publish
PHASE=<phase.name>`, or `publish=true` on a single run) rebuilds the summary CSV and the
figure from the run's rows into the tracked paths its locked config names, atomically (a
temporary file renamed over the old one), and refuses a partial grid unless forced.
Multirun jobs never publish; `make collect` merges their rows and publishes the same way.

Each phase module provides KEY_FIELDS, expected_cells(config), tables(frame, config, csv) ->
{path: table} (the summary with n and 95% intervals, its companions, and the compact per-sample
rows `<name>_rows.csv.gz` every number re-derives from) and write_outputs(frame, config, csv,
figure) -> the paths it wrote (each through `atomic_path`). Any published summary re-derives
from its rows with one command:

    python -m phases.publish --rederive saved_results/phase01_full_cache_rows.csv.gz
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path

from idlekv.results import CONFIG_FILE, ResultStore, cell_key

ROOT = Path(__file__).resolve().parents[1]
RUN_SUMMARY, RUN_FIGURE = "summary.csv", "figure.png"


class PublishError(RuntimeError):
    pass


@contextmanager
def atomic_path(path: Path):
    """A temporary path beside `path` (same suffix) that replaces it when the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def companion(csv: Path, kind: str) -> Path:
    """Where a summary's companion table goes: <name>_pairs.csv; the per-sample rows, gzipped: <name>_rows.csv.gz."""
    return csv.with_name(f"{csv.stem}_{kind}.csv" + (".gz" if kind == "rows" else ""))


def write_tables(tables: dict) -> list[Path]:
    """Each table to its path, atomically (gzip where the path ends in .gz)."""
    for path, table in tables.items():
        with atomic_path(path) as tmp:
            table.to_csv(tmp, index=False, compression="gzip" if path.suffix == ".gz" else None)
    return list(tables)


def write_tables_and_figure(tables: dict, figure: Path, draw) -> list[Path]:
    """The tables (the first is the summary) and the figure `draw(summary, path)` makes, each written atomically."""
    written = write_tables(tables)
    with atomic_path(figure) as tmp:
        draw(next(iter(tables.values())), tmp)
    return [*written, figure]


def experiment_of(rows_file: Path) -> dict:
    """The locked config of the experiment whose rows these are (configs/experiment/<name>.yaml)."""
    from omegaconf import OmegaConf

    from idlekv.config import compose

    name = rows_file.name.removesuffix("_rows.csv.gz")
    return OmegaConf.to_container(compose([f"experiment={name}"]), resolve=True)


def rederive(rows_file: Path) -> bool:
    """Recompute every published table of an experiment from its compact rows; True when all are identical."""
    import io

    import pandas as pd

    rows_file = Path(rows_file)
    config = experiment_of(rows_file)
    csv = rows_file.with_name(rows_file.name.removesuffix("_rows.csv.gz") + ".csv")
    same = True
    for path, table in phase_module(config).tables(pd.read_csv(rows_file), config, csv).items():
        if path == rows_file:
            continue
        equal = pd.read_csv(path).equals(pd.read_csv(io.StringIO(table.to_csv(index=False))))
        print(f"{path.name}: {len(table)} lines re-derived from {rows_file.name}: {'identical' if equal else 'DIFFERENT'}")
        same &= equal
    return same


def phase_module(config: dict):
    return importlib.import_module(config["phase"]["module"])


def missing_cells(module, config: dict, rows: list[dict]) -> list[tuple]:
    done = {cell_key(r, module.KEY_FIELDS) for r in rows}
    return sorted({cell_key(c, module.KEY_FIELDS) for c in module.expected_cells(config)} - done)


def write_outputs(module, frame, config: dict, csv: Path, figure: Path) -> list[Path]:
    """The phase's outputs for these destinations; each file is written through `atomic_path`."""
    return module.write_outputs(frame, config, csv, figure)


def report_run(store: ResultStore, run_dir: Path, config: dict) -> list[Path]:
    """The run's own summary and figure, inside its run folder (nothing tracked is touched)."""
    return write_outputs(phase_module(config), store.to_frame(), config, run_dir / RUN_SUMMARY, run_dir / RUN_FIGURE)


def publish_rows(module, frame, config: dict, missing: list, force: bool) -> list[Path]:
    if missing and not force:
        raise PublishError(f"{config['phase']['name']}: {len(missing)} cells of the grid have no row yet (e.g. "
                           f"{dict(zip(module.KEY_FIELDS, missing[0]))}); finish the run first, or publish a partial grid "
                           "with --force")
    phase = config["phase"]
    return write_outputs(module, frame, config, ROOT / phase["csv"], ROOT / phase["figure"])


def publish(run_dir: str | Path, force: bool = False) -> list[Path]:
    """Rebuild the tracked CSV and figure of the run in `run_dir` from its rows."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).is_file():
        raise PublishError(f"{run_dir} has no {CONFIG_FILE}: not a run folder (runs/<phase.name>)")
    config = json.loads((run_dir / CONFIG_FILE).read_text())
    module = phase_module(config)
    store = ResultStore(run_dir, module.KEY_FIELDS, read_only=True)
    if not len(store):
        raise PublishError(f"{run_dir} holds no rows")
    return publish_rows(module, store.to_frame(), config, missing_cells(module, config, store.rows), force)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="a run folder, e.g. runs/phase03_repair_4q")
    parser.add_argument("--force", action="store_true", help="publish a grid with cells still missing")
    parser.add_argument("--rederive", action="store_true",
                        help="run_dir is a published rows file (saved_results/<name>_rows.csv.gz): recompute its tables and compare")
    args = parser.parse_args(argv)
    if args.rederive:
        return 0 if rederive(Path(args.run_dir)) else 1
    try:
        paths = publish(args.run_dir, args.force)
    except PublishError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for path in paths:
        print(f"published {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
