from pathlib import Path

import pytest
import torch
from hydra.errors import ConfigCompositionException

from idlekv.config import compose
from idlekv.models import load_model
from idlekv.tiny_models import build_tiny_model


def test_default_config_composes_every_group():
    cfg = compose()
    assert {"model", "task", "retention", "repair", "logger"} <= set(cfg)
    assert cfg.model.path == "models/embedded" and cfg.repair.burst == [-2, 20]


def test_model_group_drives_the_loader(tmp_path):
    build_tiny_model("qwen2", tmp_path / "m")
    cfg = compose([f"model.path={tmp_path / 'm'}", "model.dtype=bfloat16"])
    loaded = load_model(cfg.model.path, dtype=cfg.model.dtype, device="cpu", attn_implementation=cfg.model.attn_implementation)
    assert loaded.spec.dtype == torch.bfloat16 and loaded.spec.family == "qwen2"


def test_unknown_group_option_is_an_error():
    with pytest.raises(ConfigCompositionException):
        compose(["retention=no_such_rule"])


def test_task_group_builds_a_task_spec():
    from ruler.tasks import spec_from_config

    cfg = compose(["task.options.split=clean", "+task.options.recency_window=128"])
    spec = spec_from_config(cfg.task)
    assert (spec.name, spec.split, spec.recency_window, spec.num_keys) == ("mq_niah_4q", "clean", 128, 4)
    assert spec_from_config(compose(["task=niah"]).task).haystack == "noise"


@pytest.mark.parametrize("experiment", sorted(p.stem for p in (Path(__file__).parents[1] / "configs" / "experiment").glob("*.yaml")))
def test_experiments_own_their_run_and_sweep_folders(experiment):
    """A rerun or a re-launched sweep must find the same folder to resume its cells."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    from idlekv.config import CONFIG_DIR

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = hydra_compose("config", overrides=[f"experiment={experiment}"], return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)
        assert cfg.hydra.run.dir == f"runs/{cfg.phase.name}"
        assert cfg.hydra.sweep.dir == f"multirun/{cfg.phase.name}"
