"""Shared fixtures: composed configs shrunk to tiny sizes, and a real-CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SEGTRAIN = str(Path(sys.executable).parent / "segtrain")

# A few seconds per run on 2 CPU cores: tiny volumes, tiny network, a couple of steps.
TINY_3D = [
    "data.synthetic.num_cases=6",
    "data.synthetic.shape=[32,32,32]",
    "data.synthetic.radius=[3,6]",
    "data.patch_size=[16,16,16]",
    "data.patches_per_epoch=4",
    "data.batch_size=2",
    "model.channels=[4,8,16,32]",
    "trainer.max_epochs=1",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "trainer.log_every_n_steps=1",
]
TINY_2D = [
    "data=synthetic2d",
    "data.synthetic.num_cases=6",
    "data.synthetic.shape=[64,64]",
    "data.patch_size=[32,32]",
    "data.patches_per_epoch=8",
    "data.batch_size=4",
    "model.channels=[4,8,16,32]",
    "trainer.max_epochs=1",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "trainer.log_every_n_steps=1",
]


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One dataset cache for the whole session (synthetic data is generated once)."""
    return tmp_path_factory.mktemp("segtrain-cache")


def run_cli(args: list[str], cwd: Path, cache_dir: Path, timeout: int = 600, program: str = SEGTRAIN,
            env: dict | None = None) -> subprocess.CompletedProcess:
    """Run a segtrain command line in a subprocess, as a user would; returns the completed process."""
    full_env = {**os.environ, "SEGTRAIN_CACHE_DIR": str(cache_dir), "PYTHONWARNINGS": "ignore", **(env or {})}
    full_env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run([program, *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)


def compose(overrides: list[str], cache_dir: Path | None = None, run_dir: Path | None = None):
    """Compose configs/train.yaml with Hydra's compose API (no run directory needed)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import open_dict

    from segtrain.cli import config_dir

    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = hydra_compose("train", overrides=overrides, return_hydra_config=False)
    with open_dict(cfg):
        if cache_dir is not None:
            cfg.paths.cache_dir = str(cache_dir)
        cfg.paths.output_dir = str(run_dir) if run_dir else "."
    return cfg
