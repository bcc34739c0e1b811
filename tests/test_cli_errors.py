"""Every mistake on the command line is one `segtrain: error:` line, exit 2, no traceback, and no run
folder or event file left behind; typos get the closest names."""

from __future__ import annotations

import pytest

from helpers.cli import SEGTRAIN, TINY_2D, run_cli

pytestmark = pytest.mark.slow


def one_line(proc, run=None) -> str:
    assert proc.returncode == 2, f"exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr and "HYDRA_FULL_ERROR" not in proc.stderr, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("segtrain: error: "), proc.stderr[-3000:]
    if run is not None:
        assert not run.exists(), sorted(p.name for p in run.rglob("*"))
    return lines[0]


@pytest.mark.parametrize("override, expected", [
    ("loss=tverksy", "loss=tverksy: there is no loss 'tverksy'; did you mean tversky? options: balanced_ce"),
    ("model=unett", "model=unett: there is no model 'unett'; did you mean unet? options: dynunet, unet, unetpp"),
    ("data=synthetic2", "data=synthetic2: there is no data 'synthetic2'; did you mean synthetic2d?"),
    ("optim=adam", "optim=adam: there is no optim 'adam'; did you mean adamw? options: adamw, sgd"),
    ("trainer=gpus", "trainer=gpus: there is no trainer 'gpus'; did you mean gpu?"),
])
def test_unknown_group_option_names_the_closest(tmp_path, cache_dir, override, expected):
    run = tmp_path / "run"
    line = one_line(run_cli([override, f"hydra.run.dir={run}"], tmp_path, cache_dir), run)
    assert expected in line


@pytest.mark.parametrize("overrides, expected", [
    (["loss=tversky", "loss.alhpa=0.3"],
     "loss.alhpa=0.3: loss 'tversky' has no parameter 'alhpa'; did you mean alpha? its parameters are: alpha, batch, beta"),
    (["loss=dice", "loss.alpha=2"], "loss.alpha=2: loss 'dice' has no parameter 'alpha'; its parameters are: batch"),
    (["data.patch_sise=[32,32,32]"], "data.patch_sise=[32,32,32]: 'data' has no setting 'patch_sise'; did you mean patch_size?"),
])
def test_unknown_parameter_lists_what_exists(tmp_path, cache_dir, overrides, expected):
    run = tmp_path / "run"
    line = one_line(run_cli([*overrides, f"hydra.run.dir={run}"], tmp_path, cache_dir), run)
    assert expected in line and "+loss" not in line


def test_sweep_with_an_unknown_option_is_refused_before_any_job(tmp_path, cache_dir):
    sweep = tmp_path / "sweep"
    line = one_line(run_cli(["-m", "loss=dice,tverksy", f"hydra.sweep.dir={sweep}"], tmp_path, cache_dir), sweep)
    assert "did you mean tversky?" in line


def test_options_from_a_users_config_dir_count(tmp_path, cache_dir):
    presets = tmp_path / "mine" / "loss"
    presets.mkdir(parents=True)
    (presets / "recall.yaml").write_text("name: tversky\nalpha: 0.2\nbeta: null\nsmooth: 1.0\ninclude_background: false\nbatch: false\n")
    run = tmp_path / "run"
    line = one_line(run_cli(["--config-dir", str(tmp_path / "mine"), "loss=recal", f"hydra.run.dir={run}"], tmp_path, cache_dir), run)
    assert "did you mean recall?" in line


def test_bad_trainer_setting_is_caught_before_preflight(tmp_path, cache_dir):
    run = tmp_path / "run"
    proc = run_cli([*TINY_2D, "trainer.devices=0", f"hydra.run.dir={run}"], tmp_path, cache_dir)
    line = one_line(proc, run)
    assert "trainer.devices=0: give the number of GPUs" in line and "preflight" not in proc.stdout


@pytest.mark.parametrize("overrides, expected", [
    (["optim=sgd", "optim.optimizer.lr=-1"], "optim.optimizer (torch.optim.SGD) is invalid: Invalid learning rate: -1"),
    (["optim.scheduler.power=-1"], "optim.scheduler (torch.optim.lr_scheduler.PolynomialLR) is invalid"),
])
def test_bad_optimizer_or_schedule_is_one_line_before_preflight(tmp_path, cache_dir, overrides, expected):
    run = tmp_path / "run"
    proc = run_cli([*TINY_2D, *overrides, f"hydra.run.dir={run}"], tmp_path, cache_dir)
    assert expected in one_line(proc, run) and "preflight" not in proc.stdout


def test_redirected_output_is_plain_lines(tmp_path, cache_dir):
    """Output to a file (Docker, SLURM): no progress-bar frames, the per-epoch table, a handful of lines;
    train.log holds the same table and summary."""
    run = tmp_path / "run"
    args = [a for a in TINY_2D if "enable_progress_bar" not in a]  # the progress callback decides: not a terminal
    proc = run_cli([*args, "trainer.max_epochs=4", "callbacks.progress.every_n_steps=4", f"hydra.run.dir={run}"],
                   tmp_path, cache_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    output = proc.stdout + proc.stderr
    assert "\r" not in output and "it/s" not in output
    lines = output.splitlines()
    assert len(lines) < 40, output
    rows = [line for line in lines if line.strip()[:1].isdigit() and " | " in line]
    assert [row.split("|")[0].strip() for row in rows] == ["0", "1", "2", "3"]
    steps = [line for line in lines if line.startswith("epoch ") and "step " in line]
    assert len(steps) == 2 and steps[0].startswith("epoch 2/4  step 2/2 (global 4)")  # steps 4 and 8; epochs from 1
    for noise in ("Total Flops", "`Trainer.fit` stopped", "Loading `train_dataloader`", "TPU available", "LeafSpec"):
        assert noise not in output, noise
    log = (run / "train.log").read_text()
    assert all(row in log for row in rows) and "segtrain: finished 4 epoch(s)" in log


def test_redirected_output_prints_by_time_too(tmp_path, cache_dir):
    """A slow epoch says it is alive: a line at least every callbacks.progress.every_n_seconds, in steps and validation."""
    run = tmp_path / "run"
    args = [a for a in TINY_2D if "enable_progress_bar" not in a]
    proc = run_cli([*args, "trainer.max_epochs=2", "callbacks.progress.every_n_steps=0",
                    "callbacks.progress.every_n_seconds=0.0001", f"hydra.run.dir={run}"], tmp_path, cache_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = (proc.stdout + proc.stderr).splitlines()
    assert [line.split("  ")[1] for line in lines if line.startswith("epoch ") and "  step " in line] == \
        ["step 1/2 (global 1)", "step 2/2 (global 2)", "step 1/2 (global 3)", "step 2/2 (global 4)"]
    validation = [line for line in lines if "validation: case" in line]
    assert validation and validation[0].startswith("epoch 1/2  validation: case 1/")


def test_predict_takes_a_list_of_files(tmp_path, cache_dir):
    run = tmp_path / "run"
    assert run_cli([*TINY_2D, f"hydra.run.dir={run}"], tmp_path, cache_dir).returncode == 0
    images = sorted(next(cache_dir.rglob("synthetic2d_*")).glob("images/*.png"))[:2]
    out = tmp_path / "out"
    proc = run_cli([f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", f"input=[{images[0]},{images[1]}]",
                    f"output_dir={out}", f"hydra.run.dir={tmp_path / 'p'}"], tmp_path, cache_dir,
                   program=SEGTRAIN + "-predict")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in images)
    twice = run_cli([f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", f"input=[{images[0]},{images[0]}]",
                     f"hydra.run.dir={tmp_path / 'p2'}"], tmp_path, cache_dir, program=SEGTRAIN + "-predict")
    assert "both case" in one_line(twice)
