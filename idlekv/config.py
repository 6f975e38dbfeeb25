"""Compose the project's Hydra configuration from code (tests, notebooks, scripts)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

# Our configs/hydra/launcher/{joblib,submitit_*}.yaml share the plugins' schema names on
# purpose (hydra/launcher=joblib just works); Hydra validates them against those schemas
# and warns that the matching is deprecated. The validation is what we want: hush the warning.
warnings.filterwarnings("ignore", message="(?s).*is validated against ConfigStore schema with the same name.*")

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


def compose(overrides: Sequence[str] = (), config_name: str = "config"):
    """The resolved config for `overrides`, as a DictConfig (hydra's own `compose`)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=list(overrides))
