"""What every phase's run.py shares: the model from the config, threads, and the Hydra entry point
(grid validation, one-line user errors, publishing only when asked)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

import idlekv.config  # noqa: F401  (hushes Hydra's schema-name warning for our launcher configs)
from idlekv.models import LoadedModel, load_model, weights_fingerprint

ROOT = Path(__file__).resolve().parents[1]


def load_phase_model(cfg: DictConfig, phase: str) -> LoadedModel:
    """The configured model (relative paths from the repository root), which must have a tokenizer."""
    lm = load_model(ROOT / cfg.model.path, dtype=cfg.model.dtype, device=None if cfg.device == "auto" else cfg.device,
                    attn_implementation=cfg.model.attn_implementation, trust_remote_code=cfg.model.trust_remote_code)
    if lm.tokenizer is None:
        raise SystemExit(f"{cfg.model.path} has no tokenizer files; {phase} needs one")
    return lm


def locked_model(cfg: DictConfig) -> dict:
    """The model's config as a phase locks it into its run directory, with a fingerprint of
    the weights: retraining the model in place then refuses to resume the old rows."""
    return {**OmegaConf.to_container(cfg.model), "weights": weights_fingerprint(ROOT / cfg.model.path)}


def rule_for_model(options: dict, model_path: str):
    """A retention rule from its config options (name + fields; `window` is the engine's); a
    learned probe without a path is the one trained for the model (<model>/relevance_probe.pt)."""
    from idlekv.retention import build_rule

    options = {k: v for k, v in options.items() if k != "window"}
    name = options.pop("name")
    if name == "learned_relevance" and options.get("path") is None:
        options["path"] = str(ROOT / model_path / "relevance_probe.pt")
    return build_rule(name, **options)


def available_threads() -> int:
    """CPU threads for torch: the cores this process may use, less those other work keeps busy (a
    sample ran 9x slower with torch's default threads than with one, on 2 cores shared with another run)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores - round(os.getloadavg()[0]))


def set_threads(setting) -> int:
    import torch

    threads = available_threads() if setting in (None, "auto") else int(setting)
    torch.set_num_threads(threads)
    return threads


def _max_positions(cfg: DictConfig) -> int | None:
    from idlekv.models import check_model_folder

    _, config = check_model_folder(ROOT / cfg.model.path)
    return config.get("max_position_embeddings")


def phase_main(run: Callable[[DictConfig, Path], object], module: str, experiment: str,
               publisher: Callable[[Path], list] | None = None):
    """A Hydra entry point: validate the grid, run `run(cfg, output_dir)` under runs/, publish only when asked.

    A user error (an invalid grid, a locked or mismatched run folder, a model folder that cannot be used, a
    config that cannot fit the device) prints one line and exits 2; HYDRA_FULL_ERROR=1 or debug=true shows
    the traceback."""
    from hydra.types import RunMode

    from idlekv.models import ModelLoadError
    from idlekv.repair.memory import DoesNotFit
    from idlekv.results import ConfigMismatchError, CorruptRowError, RunLockedError
    from phases.grid import GridError, validate_grid
    from phases.publish import PublishError, publish

    user_errors = (GridError, ConfigMismatchError, CorruptRowError, RunLockedError, ModelLoadError, DoesNotFit, PublishError)

    @hydra.main(config_path=str(ROOT / "configs"), config_name="config", version_base="1.3")
    def main(cfg: DictConfig) -> None:
        if "phase" not in cfg:
            raise SystemExit(f"choose the experiment: python -m {module} experiment={experiment}")
        from hydra.core.hydra_config import HydraConfig

        hydra_cfg = HydraConfig.get()
        try:
            if cfg.get("publish") and hydra_cfg.mode == RunMode.MULTIRUN:
                raise PublishError("multirun jobs never publish (each holds a slice of the grid): run the sweep, then "
                                   f"make collect PHASE={cfg.phase.name}")
            validate_grid(cfg, _max_positions(cfg))
            set_threads(cfg.get("threads"))
            run_dir = Path(hydra_cfg.runtime.output_dir)
            run(cfg, run_dir)
            if cfg.get("publish"):
                for path in (publisher or publish)(run_dir):
                    print(f"published {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
        except user_errors as err:
            if os.environ.get("HYDRA_FULL_ERROR") == "1" or cfg.get("debug"):
                raise
            for line in str(err).splitlines():
                print(f"error: {line}", file=sys.stderr)
            raise SystemExit(2) from None

    return main
