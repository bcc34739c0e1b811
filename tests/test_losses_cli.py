"""Every registry loss trains through the real command line (one Hydra multirun, one step each)."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from helpers.cli import TINY_3D, run_cli
from segtrain.events import read_scalars
from segtrain.losses import available_losses

pytestmark = pytest.mark.slow


def test_every_loss_trains_one_cli_step(tmp_path, cache_dir):
    names = available_losses()
    sweep = tmp_path / "sweep"
    proc = run_cli(
        ["-m", *TINY_3D, f"loss={','.join(names)}", "trainer.fast_dev_run=true", f"hydra.sweep.dir={sweep}"],
        tmp_path, cache_dir,
    )
    assert proc.returncode == 0, f"STDOUT:\n{proc.stdout[-3000:]}\nSTDERR:\n{proc.stderr[-5000:]}"
    runs = {}
    for run in (p for p in sweep.iterdir() if (p / ".hydra").is_dir()):
        overrides = OmegaConf.load(run / ".hydra" / "overrides.yaml")
        runs[next(o.split("=", 1)[1] for o in overrides if o.startswith("loss="))] = run
    assert sorted(runs) == names
    for name, run in runs.items():
        log = (run / "train.log").read_text()
        assert "segtrain: finished" in log, f"loss={name} did not finish:\n{log[-2000:]}"

def test_boundary_alpha_schedule_is_logged(tmp_path, cache_dir):
    run = tmp_path / "run"
    proc = run_cli(
        [*TINY_3D, "loss=boundary", "loss.alpha_step=0.25", "trainer.max_epochs=2", f"hydra.run.dir={run}"], tmp_path, cache_dir
    )
    assert proc.returncode == 0, proc.stderr[-5000:]
    alpha = [s.value for s in read_scalars(run)["train/loss_alpha"]]
    assert alpha == pytest.approx([1.0, 0.75])
