"""An append-only, resumable store of result rows: one row per experiment cell.

Rows go to `rows.jsonl`, one JSON object per line, each written with a single append and
fsync'd, so a killed writer leaves at most one torn last line, which the next open cuts
off. A cell is identified by its key fields; a rerun asks `is_done` and skips. A writer
holds an exclusive lock on the folder for its lifetime (a second one is refused, with the
holder's pid). The locked configuration is saved beside the rows; reopening a folder that
holds rows with a different (or missing, or unreadable) configuration is refused, so rows
of two setups never mix. Each open appends its environment to `environment.jsonl`. A cell
is counted once: duplicates are refused on append and dropped, with a report, on load.
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

ROWS_FILE = "rows.jsonl"
CONFIG_FILE = "config.json"
ENVIRONMENT_FILE = "environment.jsonl"
LOCK_FILE = ".lock"


class ConfigMismatchError(RuntimeError):
    pass


class DuplicateCellError(ValueError):
    pass


class RunLockedError(RuntimeError):
    pass


class CorruptRowError(ValueError):
    pass


def cell_key(row: Mapping, key_fields: Sequence[str], where: str = "a row") -> tuple:
    missing = [f for f in key_fields if f not in row]
    if missing:
        raise CorruptRowError(f"{where} lacks the key fields {missing} (a cell needs {list(key_fields)})")
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
        read_only: bool = False,
    ):
        self.run_dir = Path(run_dir)
        self.key_fields = tuple(key_fields)
        self.path = self.run_dir / ROWS_FILE
        self.read_only = read_only
        self._lock_fd: int | None = None
        if not read_only:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._lock()
        self._rows, self.duplicates_dropped = self._load()
        self._done = {cell_key(r, self.key_fields) for r in self._rows}
        if config is not None:
            self._lock_config(json.loads(json.dumps(config, default=str)))
        if environment is not None and not read_only:
            with open(self.run_dir / ENVIRONMENT_FILE, "a") as f:  # every resume's, never overwritten
                f.write(json.dumps(environment, sort_keys=True, default=str) + "\n")

    # --- the folder lock -------------------------------------------------------------------
    def _lock(self) -> None:
        fd = os.open(self.run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunLockedError(f"{self.run_dir} is being written by another run (pid {holder}); wait for it to finish, "
                                 "or give this run its own folder (phase.name=...)") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_fd = fd

    def close(self) -> None:
        """Release the folder (the lock also goes with the process)."""
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> "ResultStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _lock_config(self, config: Mapping) -> None:
        path = self.run_dir / CONFIG_FILE
        fresh = f"start a fresh run with phase.name=<a new name> (its outputs follow the name), or remove {self.run_dir}"
        if not self._rows:  # nothing is locked until a row exists: a run that failed early leaves no lock
            if not self.read_only:
                write_json_atomic(path, config)
            return
        if not path.exists():
            raise ConfigMismatchError(f"{self.run_dir} holds {len(self._rows)} rows but no {CONFIG_FILE}: they cannot be "
                                      f"checked against this configuration; {fresh}")
        try:
            locked = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ConfigMismatchError(f"{path}:{err.lineno} is not valid JSON ({err.msg}), so the {len(self._rows)} rows "
                                      f"beside it cannot be checked against this configuration; {fresh}") from None
        diff = config_diff(locked, config)
        if diff:
            raise ConfigMismatchError(f"{self.run_dir} holds {len(self._rows)} rows of another configuration; {fresh}. "
                                      "Differences: " + "; ".join(diff[:10]))

    def _load(self) -> tuple[list[dict], int]:
        if not self.path.exists():
            return [], 0
        raw = self.path.read_bytes()
        end = raw.rfind(b"\n") + 1
        if end != len(raw) and not self.read_only:  # a writer died mid-line: cut the torn tail
            with open(self.path, "r+b") as f:
                f.truncate(end)
        rows, seen, dropped = [], {}, []
        for number, line in enumerate(raw[:end].splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise CorruptRowError(f"{self.path}:{number} is not valid JSON ({err.msg}); the file was edited by hand?") from None
            key = cell_key(row, self.key_fields, f"{self.path}:{number}")
            if key in seen:
                dropped.append(f"{self.path}:{number} repeats the cell of line {seen[key]}")
                continue
            seen[key] = number
            rows.append(row)
        if dropped:
            print(f"warning: {len(dropped)} duplicate rows dropped (the first of each cell is kept): " + "; ".join(dropped[:5]),
                  file=sys.stderr)
        return rows, len(dropped)

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
        if self.read_only:
            raise RuntimeError(f"{self.run_dir} was opened read-only")
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
