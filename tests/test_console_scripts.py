"""The installed console scripts as real processes, as a user starts them (the other tests run them in-process).

One chain: ``segtrain debug=tiny`` trains, ``segtrain-predict`` segments two images with its
checkpoint, ``segtrain-evaluate`` scores them, ``segtrain-compare`` and ``segtrain-losses`` list.
The environment is the user's (no ``PYTHONWARNINGS=ignore``): a fresh interpreter must print no
Python warning and no traceback, and each script exits 0.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from helpers.cli import BIN

pytestmark = pytest.mark.slow


def run(program: str, *args: str, cwd: Path, cache_dir: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONWARNINGS", "HYDRA_FULL_ERROR")}
    env["SEGTRAIN_CACHE_DIR"] = str(cache_dir)
    proc = subprocess.run([str(BIN / program), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{program}: exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    for marker in ("Warning:", "Traceback"):
        assert marker not in proc.stdout + proc.stderr, f"{program} printed {marker!r}:\n{proc.stderr[-3000:]}"
    return proc


def test_every_console_script_runs_as_a_process(tmp_path, cache_dir):
    train = run("segtrain", "debug=tiny", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, cache_dir=cache_dir)
    assert "segtrain: finished 1 epoch(s), 2 steps" in train.stdout
    images = sorted(next(cache_dir.glob("synthetic2d_*")).glob("images/*.png"))[:2]
    inputs, labels = tmp_path / "inputs", tmp_path / "labels"
    inputs.mkdir(), labels.mkdir()
    for image in images:
        shutil.copy(image, inputs / image.name)
        shutil.copy(image.parent.parent / "labels" / image.name, labels / image.name)
    run("segtrain-predict", f"ckpt_path={tmp_path / 'run' / 'checkpoints' / 'last.ckpt'}", f"input={inputs}",
        f"output_dir={tmp_path / 'pred'}", f"hydra.run.dir={tmp_path / 'p'}", cwd=tmp_path, cache_dir=cache_dir)
    assert sorted(p.name for p in (tmp_path / "pred").glob("*.png")) == sorted(p.name for p in images)
    run("segtrain-evaluate", f"pred={tmp_path / 'pred'}", f"label={labels}", f"output_dir={tmp_path / 'scores'}",
        cwd=tmp_path, cache_dir=cache_dir)
    assert (tmp_path / "scores" / "metrics_per_case.csv").is_file()
    compare = run("segtrain-compare", str(tmp_path / "run"), cwd=tmp_path, cache_dir=cache_dir)
    assert "run" in compare.stdout
    assert "tversky" in run("segtrain-losses", cwd=tmp_path, cache_dir=cache_dir).stdout


@pytest.mark.parametrize("args, expected", [
    (["loss=tversky", "loss.alpha=2"], "loss 'tversky': alpha=2 is out of range; allowed [0.0, 1.0]"),
    (["data=nifti"], "data.root is not set"),
    (["data=nifti", "data.root=/does/not/exist"], "data.root=/does/not/exist does not exist"),
    (["trainer.devices=0"], "trainer.devices=0: give the number of GPUs"),
    (["trainer.precision=17"], "trainer.precision=17: use 32-true"),
    (["augment.rotation_prob=2"], "augment.rotation_prob=2 must be a probability"),
    (["--help"], None),
])
def test_errors_and_help_come_before_torch_is_imported(tmp_path, args, expected):
    """What the config alone tells is said before torch, Lightning or the data load (scripts/bench_startup.py
    times it: close to --help's time); --help lists the config groups without composing the config."""
    import subprocess
    import sys

    code = ("import sys; from segtrain.cli import main; sys.argv = ['segtrain', *sys.argv[1:]]\n"
            "try:\n    main()\nexcept SystemExit as exit:\n    print('exit', exit.code, file=sys.stderr)\n"
            "print('torch imported' if 'torch' in sys.modules else 'torch not imported', file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert "torch not imported" in proc.stderr, proc.stderr[-2000:]
    if expected is None:
        assert "Config groups" in proc.stdout and "loss:" in proc.stdout and "--hydra-help" in proc.stdout
    else:
        assert f"segtrain: error: {expected}"[:60] in proc.stderr and "exit 2" in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "outputs").exists()
