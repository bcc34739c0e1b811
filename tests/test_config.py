"""Config contracts: every Trainer argument settable, every group option composes, configs found."""

import inspect
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from helpers.cli import ROOT, compose


def test_every_trainer_argument_is_in_the_trainer_config():
    from lightning.pytorch import Trainer

    cfg = OmegaConf.load(ROOT / "configs" / "trainer" / "default.yaml")
    args = [p for p in inspect.signature(Trainer.__init__).parameters if p != "self"]
    missing = [a for a in args if a not in cfg]
    assert not missing, f"add these Trainer arguments to configs/trainer/default.yaml: {missing}"


@pytest.mark.parametrize(
    "group", ["data", "model", "loss", "optim", "trainer", "logger", "callbacks"]
)
def test_every_option_of_each_group_composes(group):
    options = sorted(p.stem for p in (ROOT / "configs" / group).glob("*.yaml"))
    assert options
    for option in options:
        cfg = compose([f"{group}={option}"])
        assert group in cfg


def test_trainer_override_without_plus():
    cfg = compose(["trainer.gradient_clip_val=0.5", "trainer.devices=4", "trainer.detect_anomaly=true"])
    assert cfg.trainer.gradient_clip_val == 0.5 and cfg.trainer.devices == 4 and cfg.trainer.detect_anomaly


def test_config_dir_points_at_the_shipped_configs():
    from segtrain.cli import config_dir

    assert (Path(config_dir()) / "train.yaml").is_file()


def test_loss_configs_build(tmp_path):
    from segtrain.train import build_loss_from_config

    for path in sorted((ROOT / "configs" / "loss").glob("*.yaml")):
        cfg = compose([f"loss={path.stem}"])
        assert cfg.loss.name == path.stem
        build_loss_from_config(cfg.loss)


@pytest.mark.parametrize("experiment", sorted(p.stem for p in (ROOT / "configs" / "experiment").glob("*.yaml")))
def test_experiments_compose(experiment):
    cfg = compose([f"experiment={experiment}"])
    assert cfg.loss.name in ("tversky", "dice_ce")


def test_loss_sweep_names_registered_losses():
    from segtrain.losses import available_losses

    cfg = OmegaConf.load(ROOT / "configs" / "hparams_search" / "loss_sweep.yaml")
    for name in cfg.hydra.sweeper.params.loss.split(","):
        assert name in available_losses()
        assert (ROOT / "configs" / "loss" / f"{name}.yaml").is_file()


@pytest.mark.parametrize("debug, spelled_out", [("tiny", "TINY_2D"), ("tiny3d", "TINY_3D")])
def test_the_debug_presets_are_the_tests_tiny_runs(debug, spelled_out):
    """``segtrain debug=tiny`` is the tiny run the tests spell out key by key (tests/helpers/cli.py)."""
    import helpers.cli

    ours, theirs = compose([f"debug={debug}"]), compose(getattr(helpers.cli, spelled_out))
    for key in ("data", "model", "augment"):
        a, b = OmegaConf.to_container(ours[key], resolve=True), OmegaConf.to_container(theirs[key], resolve=True)
        a.pop("max_epochs", None), b.pop("max_epochs", None)  # the run's length is compared as trainer.max_epochs
        assert a == b, key
    for key in ("max_epochs", "enable_model_summary", "log_every_n_steps", "enable_progress_bar"):
        assert ours.trainer[key] == theirs.trainer[key], key


def test_debug_checks_turns_on_the_slow_checks_and_combines_with_a_size():
    cfg = compose(["debug=[tiny,checks]"])
    assert cfg.checks.label_range is True and cfg.trainer.detect_anomaly is True and cfg.data.synthetic.spatial_dims == 2
    assert compose([]).checks.label_range is False  # off by default: preflight checked the labels
