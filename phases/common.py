"""What every phase's run.py shares: the model from the config, and the Hydra entry point."""

from __future__ import annotations

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
                    attn_implementation=cfg.model.attn_implementation)
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


def publish(store, run_dir: Path, phase, summarize: Callable, write_figure: Callable) -> Path:
    """Rebuild a phase's summary CSV (saved_results/) and figure (paper/figures/) from all its rows."""
    summary = summarize(store.to_frame())
    csv = ROOT / phase.csv
    csv.parent.mkdir(parents=True, exist_ok=True)
    summary.to_csv(csv, index=False)
    store.write_csv(run_dir / "rows.csv")
    write_figure(summary, ROOT / phase.figure)
    print(summary.to_string(index=False))
    print(f"wrote {csv} and {phase.figure}")
    return csv


def phase_main(run: Callable[[DictConfig, Path], object], module: str, experiment: str):
    """A Hydra entry point that runs `run(cfg, output_dir)` for an experiment config."""

    @hydra.main(config_path=str(ROOT / "configs"), config_name="config", version_base="1.3")
    def main(cfg: DictConfig) -> None:
        if "phase" not in cfg:
            raise SystemExit(f"choose the experiment: python -m {module} experiment={experiment}")
        from hydra.core.hydra_config import HydraConfig

        run(cfg, Path(HydraConfig.get().runtime.output_dir))

    return main
