"""Experiment tracking: the `logger` config group.

csv (default): the result store already writes every row; nothing else happens, and wandb
is never imported. wandb: each cell's metrics, the resolved config, the environment and
the phase figure go to a wandb run, offline unless the config says `mode: online`, so a
run never waits on a network; `wandb sync <run_dir>/wandb/offline-run-*` uploads it later.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path


class CsvLogger:
    def log_row(self, row: Mapping) -> None:
        pass

    def log_figure(self, path: Path) -> None:
        pass

    def finish(self) -> None:
        pass


class WandbLogger:
    def __init__(self, options: Mapping, run_dir: Path, config: Mapping, environment: Mapping):
        mode = options.get("mode", "offline")
        if mode not in ("offline", "online", "disabled"):
            raise ValueError(f"logger.mode must be offline, online or disabled, not {mode!r}")
        os.environ["WANDB_MODE"] = mode  # an explicit offline beats a WANDB_MODE=online left in the shell
        os.environ.setdefault("WANDB_SILENT", "true")
        import wandb

        self.wandb = wandb
        self.run = wandb.init(project=options.get("project", "idlekv"), name=options.get("name"), group=options.get("group"),
                              dir=str(run_dir), mode=mode, config={"config": dict(config), "environment": dict(environment)})
        self.step = 0

    def log_row(self, row: Mapping) -> None:
        metrics = {k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        labels = {k: v for k, v in row.items() if isinstance(v, str) and len(v) < 64}
        self.run.log({**metrics, **{f"cell/{k}": v for k, v in labels.items()}}, step=self.step)
        self.step += 1

    def log_figure(self, path: Path) -> None:
        if Path(path).exists():
            self.run.log({"figure": self.wandb.Image(str(path))}, step=self.step)

    def finish(self) -> None:
        self.run.finish()


def make_logger(options: Mapping, run_dir: Path, config: Mapping, environment: Mapping):
    name = options.get("name", "csv")
    if name == "csv":
        return CsvLogger()
    if name == "wandb":
        return WandbLogger(options, run_dir, config, environment)
    raise ValueError(f"unknown logger {name!r}; choose csv or wandb")
