"""Compose the project's Hydra configuration from code (tests, notebooks, scripts)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


def compose(overrides: Sequence[str] = (), config_name: str = "config"):
    """The resolved config for `overrides`, as a DictConfig (hydra's own `compose`)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=list(overrides))
