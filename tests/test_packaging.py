"""Installed anywhere: a non-editable wheel ships the configs; user config dirs extend them; Dockerfile lints."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from helpers.cli import ROOT

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """segtrain built as a wheel and installed (no deps) into a private target directory."""
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q", "-w", str(out)],
                   check=True, capture_output=True)
    wheel = next(out.glob("segtrain-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "segtrain/configs/train.yaml" in names and "segtrain/configs/loss/dice_ce.yaml" in names
    # segtrain's Optuna sweeper, in Hydra's plugin namespace, which must stay a namespace (no __init__.py of its own)
    assert "hydra_plugins/segtrain_sweeper/__init__.py" in names and "hydra_plugins/__init__.py" not in names
    site = out / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   check=True, capture_output=True)
    return site


def _run(site: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(site)}
    return subprocess.run([sys.executable, "-m", "segtrain.cli", *args], cwd=cwd, env=env, capture_output=True, text=True)


def test_wheel_finds_its_configs(installed, tmp_path):
    proc = _run(installed, "--cfg", "job", "loss=tversky", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "name: tversky" in proc.stdout
    where = subprocess.run([sys.executable, "-c", "import segtrain.cli as c; print(c.config_dir())"], cwd=tmp_path,
                           env={**os.environ, "PYTHONPATH": str(installed)}, capture_output=True, text=True)
    assert where.stdout.strip().startswith(str(installed))


def test_user_config_dir_adds_a_loss_preset(installed, tmp_path):
    user = tmp_path / "my_configs" / "loss"
    user.mkdir(parents=True)
    (user / "recall.yaml").write_text("name: tversky\nalpha: 0.2\nbeta: 0.8\nsmooth: 1.0\ninclude_background: false\nbatch: false\n")
    proc = _run(installed, "--config-dir", str(tmp_path / "my_configs"), "loss=recall", "--cfg", "job", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "alpha: 0.2" in proc.stdout


def test_dockerfile_lints_clean():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    proc = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
