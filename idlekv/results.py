"""An append-only, resumable store of result rows: one row per experiment cell.

Rows go to `rows.jsonl`, one JSON object per line, each written with a single append and
fsync'd, so a killed writer leaves at most one torn last line, which the next open cuts
off. A cell is identified by its key fields; a rerun asks `is_done` and skips. The locked
configuration and the environment are saved beside the rows; reopening a run directory
with a different locked configuration is refused, so rows of two setups never mix.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

ROWS_FILE = "rows.jsonl"
CONFIG_FILE = "config.json"
ENVIRONMENT_FILE = "environment.json"


class ConfigMismatchError(RuntimeError):
    pass


class DuplicateCellError(ValueError):
    pass


def cell_key(row: Mapping, key_fields: Sequence[str]) -> tuple:
    missing = [f for f in key_fields if f not in row]
    if missing:
        raise KeyError(f"row lacks key fields {missing}")
    return tuple(json.dumps(row[f], sort_keys=True) for f in key_fields)


def write_json_atomic(path: Path, data) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


def config_diff(old: Mapping, new: Mapping, prefix: str = "") -> list[str]:
    diffs = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, "<absent>"), new.get(key, "<absent>")
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            diffs += config_diff(a, b, f"{prefix}{key}.")
        elif a != b:
            diffs.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return diffs


class ResultStore:
    def __init__(
        self,
        run_dir: str | Path,
        key_fields: Sequence[str],
        config: Mapping | None = None,
        environment: Mapping | None = None,
    ):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.key_fields = tuple(key_fields)
        self.path = self.run_dir / ROWS_FILE
        if config is not None:
            self._lock_config(json.loads(json.dumps(config, default=str)))
        if environment is not None:
            write_json_atomic(self.run_dir / ENVIRONMENT_FILE, environment)
        self._rows = self._load()
        self._done = {cell_key(r, self.key_fields) for r in self._rows}

    def _lock_config(self, config: Mapping) -> None:
        path = self.run_dir / CONFIG_FILE
        if path.exists():
            locked = json.loads(path.read_text())
            diff = config_diff(locked, config)
            if diff:
                raise ConfigMismatchError(
                    f"{self.run_dir} holds rows of another configuration; use a new run directory. Differences: "
                    + "; ".join(diff[:10])
                )
        else:
            write_json_atomic(path, config)

    def _load(self) -> list[dict]:
        if not self.path.exists():
            return []
        raw = self.path.read_bytes()
        end = raw.rfind(b"\n") + 1
        if end != len(raw):  # a writer died mid-line: cut the torn tail
            with open(self.path, "r+b") as f:
                f.truncate(end)
        rows = []
        for number, line in enumerate(raw[:end].splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise RuntimeError(f"{self.path}:{number} is not valid JSON ({err}); the file was edited by hand?") from None
        return rows

    # --- reading -------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._rows)

    @property
    def rows(self) -> list[dict]:
        return list(self._rows)

    def is_done(self, cell: Mapping) -> bool:
        return cell_key(cell, self.key_fields) in self._done

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame(self._rows)

    def write_csv(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        self.to_frame().to_csv(tmp, index=False)
        os.replace(tmp, path)
        return path

    # --- writing -------------------------------------------------------------------------
    def append(self, row: Mapping) -> None:
        key = cell_key(row, self.key_fields)
        if key in self._done:
            raise DuplicateCellError(f"cell {dict(zip(self.key_fields, key))} is already in {self.path}")
        line = (json.dumps(row, sort_keys=True, default=_jsonable) + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        self._rows.append(json.loads(line))
        self._done.add(key)

    def extend(self, rows: Iterable[Mapping]) -> None:
        for row in rows:
            self.append(row)


def _jsonable(value):
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)
