"""The real command line, run in subprocesses as a user would (tiny data, tiny network)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from helpers.cli import TINY_2D, TINY_3D, on_user_data, run_cli
from segtrain.events import read_hparams, read_scalars

pytestmark = pytest.mark.slow

REQUIRED_TAGS = {"train/loss", "train/dice", "val/loss", "val/dice", "val/iou", "val/dice/sphere", "val/iou/sphere"}


def ok(proc):
    assert proc.returncode == 0, f"exit {proc.returncode}\nSTDOUT:\n{proc.stdout[-3000:]}\nSTDERR:\n{proc.stderr[-5000:]}"
    return proc


def test_default_run_writes_everything_into_the_run_dir(tmp_path, cache_dir):
    run = tmp_path / "run"
    proc = ok(run_cli([*TINY_3D, "trainer.max_epochs=2", f"hydra.run.dir={run}"], tmp_path, cache_dir))
    assert "best val/dice" in proc.stdout and f"tensorboard --logdir {run.parent}   (this run: {run.name})" in proc.stdout
    assert "val/dice" in proc.stdout and "val/iou" in proc.stdout  # per-epoch line
    assert (run / "checkpoints" / "best.ckpt").is_file() and (run / "checkpoints" / "last.ckpt").is_file()
    assert (run / ".hydra" / "config.yaml").is_file() and (run / "train.log").is_file()
    assert (run / "dataset_report.txt").is_file() and (run / "split.json").is_file()
    scalars = read_scalars(run)
    assert REQUIRED_TAGS <= set(scalars), sorted(scalars)
    assert any(tag.startswith("train/lr-") for tag in scalars)
    assert len(scalars["val/dice"]) == 2  # one per epoch
    assert all(0.0 <= s.value <= 1.0 for s in scalars["val/dice"])
    hparams = read_hparams(run)
    assert hparams["loss.name"] == "dice_ce" and "model._target_" in hparams
    assert {"val_summary/best_val_dice", "val_summary/final_val_dice"} <= set(scalars)
    assert scalars["val_summary/best_val_dice"][-1].value == pytest.approx(max(s.value for s in scalars["val/dice"]), abs=1e-6)


def test_resume_from_last_checkpoint_continues_where_it_stopped(tmp_path, cache_dir):
    first, second = tmp_path / "first", tmp_path / "second"
    ok(run_cli([*TINY_3D, "trainer.max_epochs=1", f"hydra.run.dir={first}"], tmp_path, cache_dir))
    last = first / "checkpoints" / "last.ckpt"
    proc = ok(run_cli([*TINY_3D, "trainer.max_epochs=2", f"ckpt_path={last}", f"hydra.run.dir={second}"], tmp_path, cache_dir))
    assert "finished 2 epoch(s)" in proc.stdout
    steps = [s.step for s in read_scalars(second)["val/dice"]]
    assert len(steps) == 1 and steps[0] >= 2 * 2 - 1  # only epoch 1 ran, after epoch 0's steps
    # the best metric continues across the resume: it covers the first run's epochs too
    both = [v.value for run in (first, second) for v in read_scalars(run)["val/dice"]]
    assert read_scalars(second)["val_summary/best_val_dice"][-1].value == pytest.approx(max(both), abs=1e-6)


def test_a_run_of_the_previous_version_resumes(tmp_path, cache_dir):
    """Checkpoints written before the trainer config had a ``_target_`` (and the callbacks their factories) resume."""
    import torch

    run = tmp_path / "run"
    ok(run_cli([*TINY_2D, f"hydra.run.dir={run}"], tmp_path, cache_dir))
    last = run / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=True)
    for key in ("config", "config_source"):  # as the previous version stored them
        stored = checkpoint["segtrain"][key]
        del stored["trainer"]["_target_"]
        stored["callbacks"]["model_checkpoint"] = {k: v for k, v in stored["callbacks"]["model_checkpoint"].items() if k != "enabled"}
        stored["callbacks"]["model_checkpoint"]["_target_"] = "segtrain.callbacks.checkpoint.RunCheckpoint"
        stored.pop("checks")
    torch.save(checkpoint, last)
    proc = ok(run_cli([f"resume={run}", "trainer.max_epochs=2"], tmp_path, cache_dir))
    assert "finished 2 epoch(s)" in proc.stdout


def test_2d_run(tmp_path, cache_dir):
    run = tmp_path / "run"
    ok(run_cli([*TINY_2D, f"hydra.run.dir={run}"], tmp_path, cache_dir))
    assert {"val/dice/disc", "train/loss"} <= set(read_scalars(run))


def test_unetpp_with_deep_supervision(tmp_path, cache_dir):
    run = tmp_path / "run"
    args = [a for a in TINY_3D if not a.startswith(("model.", "data.patch_size"))]
    ok(run_cli([*args, "model=unetpp", "model.features=[4,4,8,8,16,4]", "model.deep_supervision=true",
                "data.patch_size=[32,32,32]", f"hydra.run.dir={run}"],
               tmp_path, cache_dir))
    assert "val/dice" in read_scalars(run)


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_mixed_precision(tmp_path, cache_dir, precision):
    # 32^3 patches: with 16^3 the bottleneck is 2^3, where torch 2.13's CPU bf16 Conv3d backward gives
    # nondeterministic, at times NaN, weight gradients (12 distinct results in 200 identical calls,
    # see docs/reliability.md); the non-finite guard then stops the run, as it should.
    run = tmp_path / "run"
    ok(run_cli([*TINY_3D, "data.patch_size=[32,32,32]", f"trainer.precision={precision}", f"hydra.run.dir={run}"],
               tmp_path, cache_dir))
    losses = [s.value for s in read_scalars(run)["train/loss"]]
    assert losses and all(math.isfinite(v) for v in losses)


def test_ddp_two_cpu_processes_logs_global_metrics(tmp_path, cache_dir):
    """val/dice logged by a 2-process run equals a single-process evaluation of all validation cases.

    The 3 held-out test cases (2 ranks, one padding item) are scored once each, the rows gathered on rank 0.
    """
    import csv
    import json

    run = tmp_path / "run"
    # 3 validation cases on 2 ranks: one rank also gets a padding item, which must not be scored.
    ddp_data = ["data.synthetic.num_cases=11", "data.test_fraction=0.27", "data.val_fraction=0.375"]
    ok(run_cli([*TINY_3D, *ddp_data, "loss=tversky", "loss.alpha=0.7", "trainer.accelerator=cpu", "trainer.devices=2",
                f"hydra.run.dir={run}"], tmp_path, cache_dir))
    logged = read_scalars(run)["val/dice"][-1].value
    test_cases = [r["case"] for r in csv.DictReader((run / "test_metrics_per_case.csv").open())]
    summary = json.loads((run / "test_summary.json").read_text())
    assert sorted(test_cases) == sorted(json.loads((run / "split.json").read_text())["test"]) and len(test_cases) == 3
    assert summary["cases"] == 3
    pooled = summary["mean"]["global"]["dice"]
    test_dice = read_scalars(run)["test/dice"][-1].value
    assert (math.isnan(test_dice) and pooled is None) or test_dice == pytest.approx(pooled, abs=1e-6)

    import torch
    from lightning.pytorch import Trainer

    from helpers.cli import compose
    from segtrain.data import build_datamodule
    from segtrain.train import build_loss_from_config, build_module

    cfg = compose([*TINY_3D, *ddp_data, "loss=tversky", "loss.alpha=0.7"], cache_dir=cache_dir)
    data = build_datamodule(cfg.data)
    assert len(data.val_cases) == 3
    module = build_module(cfg, data.spec, build_loss_from_config(cfg.loss))
    module.load_state_dict(torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"])
    module.print_epoch_summary = False
    Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False).validate(module, datamodule=data)
    assert module.last_epoch_metrics["val/dice"] == pytest.approx(logged, abs=1e-5)


def test_multirun_sweeps_losses(tmp_path, cache_dir):
    proc = ok(run_cli(["-m", *TINY_3D, "loss=dice,tversky", f"hydra.sweep.dir={tmp_path / 'sweep'}"], tmp_path, cache_dir))
    runs = sorted(p for p in (tmp_path / "sweep").iterdir() if p.is_dir() and (p / ".hydra").is_dir())
    assert len(runs) == 2, proc.stdout
    assert all("val/dice" in read_scalars(r) for r in runs)


@pytest.mark.parametrize(
    "args, expected",
    [
        (["loss=nope"], "loss=nope: there is no loss 'nope'"),
        (["loss.name=nope"], "unknown loss 'nope'; available losses: balanced_ce, boundary, ce, combo"),
        (["loss=tversky", "loss.alpha=1.5"], "alpha=1.5 is out of range"),
        (["data=nifti", "data.root=/does/not/exist", "data.patch_size=[16,16,16]"], "data.root=/does/not/exist does not exist"),
        (["data=nifti", "data.patch_size=[16,16,16]"], "data.root is not set"),
        (["ckpt_path=/nope/last.ckpt"], "ckpt_path=/nope/last.ckpt: no such checkpoint"),
        (["data.patch_size=[20,20,20]", "model.strides=[2,2,2]"],
         "must be a multiple of 8 (the product of its down-sampling strides) and at least twice that"),
    ],
)
def test_bad_input_is_one_clear_line_and_nonzero_exit(tmp_path, cache_dir, args, expected):
    base = [a for a in on_user_data(TINY_3D) if not a.startswith("data.")] if "data=nifti" in args else TINY_3D
    proc = run_cli([*base, *args, f"hydra.run.dir={tmp_path / 'run'}"], tmp_path, cache_dir)
    assert proc.returncode != 0
    assert expected in proc.stderr, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists()  # a run refused before training leaves no folder


def test_ctrl_c_saves_a_resumable_checkpoint(tmp_path, cache_dir):
    """Nothing is lost: an interrupted run leaves checkpoints/interrupted.ckpt, and training resumes from it."""
    import os
    import signal
    import subprocess

    from helpers.cli import SEGTRAIN

    run = tmp_path / "run"
    env = {**os.environ, "SEGTRAIN_CACHE_DIR": str(cache_dir), "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen([SEGTRAIN, *TINY_3D, "trainer.max_epochs=200", f"hydra.run.dir={run}"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        if line.strip().startswith("1 |"):  # the second epoch finished: interrupt mid-run
            proc.send_signal(signal.SIGINT)
            break
    proc.communicate(timeout=120)
    assert proc.returncode != 0
    interrupted = run / "checkpoints" / "interrupted.ckpt"
    assert interrupted.is_file()
    resumed = ok(run_cli([*TINY_3D, "trainer.max_epochs=4", f"ckpt_path={interrupted}", f"hydra.run.dir={tmp_path / 'resumed'}"],
                         tmp_path, cache_dir))
    assert "finished 4 epoch(s)" in resumed.stdout


def test_a_run_without_loggers_or_checkpoints_trains(tmp_path, cache_dir):
    """logger=none: the LR monitor stays quiet instead of refusing the run; enable_checkpointing=false drops the checkpoint callback."""
    run = tmp_path / "run"
    proc = run_cli([*TINY_2D, "logger=none", "trainer.enable_checkpointing=false", f"hydra.run.dir={run}"], tmp_path, cache_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "segtrain: finished 1 epoch(s)" in proc.stdout
    assert not list(run.glob("events.out.tfevents.*")) and not (run / "checkpoints").exists()
