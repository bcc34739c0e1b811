"""A loss of one's own, from a folder outside the package: ``segtrain --config-dir DIR loss=<name>`` (docs/losses.md)."""

from __future__ import annotations

import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from helpers.cli import run_cli
from segtrain.errors import ConfigError
from segtrain.events import read_scalars
from segtrain.losses.base import ModuleLoss, SegmentationLoss
from segtrain.losses.registry import loss_from_config, loss_name
from segtrain.train import check_loss

MY_LOSSES = '''
import torch
from segtrain.losses.base import SegmentationLoss
from segtrain.losses.soft_counts import soft_counts


class SoftF2Loss(SegmentationLoss):
    """1 - ((1 + b^2) TP + s) / ((1 + b^2) TP + b^2 FN + FP + s): recall weighted b^2 times precision."""

    def __init__(self, beta: float = 2.0, smooth: float = 1.0, include_background: bool = False):
        super().__init__()
        self.beta = self._check_range("beta", beta, low=0.0, low_open=True)
        self.smooth = self._check_range("smooth", smooth, low=0.0)
        self.include_background = self._check_bool("include_background", include_background)
        self.epochs_seen = []

    def on_epoch_start(self, epoch):
        self.epochs_seen.append(epoch)
        return {"beta": self.beta}

    def compute(self, inputs):
        stats = soft_counts(inputs, self.include_background)
        b2 = self.beta ** 2
        score = ((1 + b2) * stats.tp + self.smooth) / ((1 + b2) * stats.tp + b2 * stats.fn + stats.fp + self.smooth)
        return (1 - score).mean()


class PlainCE(torch.nn.Module):
    def forward(self, logits, target):
        return torch.nn.functional.cross_entropy(logits, target[:, 0])


class NotAScalar(torch.nn.Module):
    def forward(self, logits, target):
        return logits.mean(1)


class Detached(torch.nn.Module):
    def forward(self, logits, target):
        return logits.detach().mean()


class NotAModule:
    pass
'''


@pytest.fixture
def user_dir(tmp_path: Path) -> Path:
    """``my_segtrain/``: ``my_losses.py`` and ``loss/f2.yaml``, as docs/losses.md shows; a fresh module name per test."""
    folder = tmp_path / "my_segtrain"
    (folder / "loss").mkdir(parents=True)
    module = f"my_losses_{tmp_path.name.replace('-', '_')}"
    (folder / f"{module}.py").write_text(MY_LOSSES)
    (folder / "loss" / "f2.yaml").write_text(textwrap.dedent(f"""\
        # Soft F-beta (beta=2: recall first)
        _target_: {module}.SoftF2Loss
        name: f2
        beta: 2.0                    # weight of recall over precision
        smooth: 1.0
        include_background: false
        """))
    return folder


def _module(user_dir: Path) -> str:
    return next(p.stem for p in user_dir.glob("my_losses_*.py"))


def test_a_loss_from_a_folder_outside_the_package_trains(tmp_path, cache_dir, user_dir):
    run = tmp_path / "run"
    proc = run_cli(["--config-dir", str(user_dir), "loss=f2", "loss.beta=3", "debug=tiny", f"hydra.run.dir={run}"],
                   tmp_path, cache_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "loss: f2" in proc.stdout + proc.stderr
    scalars = read_scalars(run)
    assert scalars["train/loss"] and all(torch.isfinite(torch.tensor(v.value)) for v in scalars["train/loss"])
    assert [v.value for v in scalars["train/loss_beta"]] == [3.0]  # its epoch hook is logged like boundary's alpha
    assert "val/dice" in scalars
    assert OmegaConf.load(run / ".hydra" / "config.yaml").loss.beta == 3.0
    # resumed with the folder it was started with (anywhere on the command line); without it, one line
    resumed = run_cli([f"resume={run}", "--config-dir", str(user_dir), "trainer.max_epochs=2"], tmp_path, cache_dir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [v.value for v in read_scalars(run)["train/loss_beta"]] == [3.0, 3.0]
    refused = run_cli([f"resume={run}", "trainer.max_epochs=3"], tmp_path, cache_dir)
    assert refused.returncode == 2 and "resume: the run used loss=f2" in refused.stderr and "--config-dir" in refused.stderr


def test_the_config_builds_the_users_class_with_its_checks(user_dir, monkeypatch):
    monkeypatch.syspath_prepend(str(user_dir))
    module = _module(user_dir)
    config = OmegaConf.to_container(OmegaConf.load(user_dir / "loss" / "f2.yaml"))
    loss = loss_from_config(config)
    assert isinstance(loss, SegmentationLoss) and loss.beta == 2.0 and loss_name(config) == "f2"
    logits, target = torch.randn(2, 2, 8, 8, requires_grad=True), torch.randint(0, 2, (2, 1, 8, 8))
    value = loss(logits, target)
    value.backward()
    assert value.ndim == 0 and torch.isfinite(logits.grad).all()
    with pytest.raises(ValueError, match=r"^loss 'f2': beta=0 is out of range"):
        loss_from_config({**config, "beta": 0})
    with pytest.raises(ValueError, match=r"loss 'f2' has no parameter 'gamma'; its parameters are: beta, smooth, include_background"):
        loss_from_config({**config, "gamma": 2})
    with pytest.raises(ValueError, match=r"loss._target_=nowhere.Loss cannot be imported .*Python path"):
        loss_from_config({"_target_": "nowhere.Loss"})
    with pytest.raises(ValueError, match=r"is not a torch.nn.Module class"):
        loss_from_config({"_target_": f"{module}.NotAModule"})
    with pytest.raises(ValueError, match=r"loss.name is missing"):
        loss_from_config({"smooth": 1.0})


def test_a_plain_module_is_wrapped_checked_and_named_by_its_class(user_dir, monkeypatch):
    monkeypatch.syspath_prepend(str(user_dir))
    config = {"_target_": f"{_module(user_dir)}.PlainCE"}
    loss = loss_from_config(config)
    assert isinstance(loss, ModuleLoss) and loss_name(config) == "PlainCE"
    logits, target = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 1, 8, 8))
    torch.testing.assert_close(loss(logits, target), torch.nn.functional.cross_entropy(logits, target[:, 0]))
    with pytest.raises(ValueError, match=r"loss 'PlainCE': target must be an integer label map"):
        loss(logits, target.float())  # the inputs are checked as for the registry's losses


@pytest.mark.parametrize("cls, message", [("NotAScalar", "not a scalar tensor"), ("Detached", "has no gradient")])
def test_a_loss_that_cannot_train_is_one_line_before_the_first_step(user_dir, monkeypatch, cls, message):
    monkeypatch.syspath_prepend(str(user_dir))
    loss_cfg = OmegaConf.create({"_target_": f"{_module(user_dir)}.{cls}"})
    spec = SimpleNamespace(num_classes=3, spatial_dims=3)
    with pytest.raises(ConfigError, match=rf"^loss {cls} fails on a \(2, 3, 8, 8, 8\) batch.*{message}") as err:
        check_loss(loss_from_config(OmegaConf.to_container(loss_cfg)), spec)
    assert "\n" not in str(err.value)
    check_loss(loss_from_config({"name": "dice_ce"}), spec)  # the registry's pass
