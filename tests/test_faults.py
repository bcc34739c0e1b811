"""Faults on real runs, through the real CLI: SIGKILL and SIGTERM then resume (exactly), NaN, changed or
broken checkpoints, unwritable run folders. A tiny 2D run with a Dice well above 0, 8 steps per epoch."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from helpers.cli import SEGTRAIN, run_cli, run_process
from segtrain.events import read_scalars

pytestmark = pytest.mark.slow

FAULT_2D = [
    "data=synthetic2d",
    "data.synthetic.num_cases=8",
    "data.synthetic.shape=[64,64]",
    "data.patch_size=[32,32]",
    "data.patches_per_epoch=32",
    "data.batch_size=4",
    "model.channels=[4,8,16,32]",
    "optim.optimizer.lr=0.01",
    "trainer.max_epochs=3",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "trainer.log_every_n_steps=1",
]
STEPS = 3 * 8


def ok(proc):
    assert proc.returncode == 0, f"exit {proc.returncode}\nSTDOUT:\n{proc.stdout[-3000:]}\nSTDERR:\n{proc.stderr[-5000:]}"
    return proc


def one_error_line(proc, code: int, label: str = "error") -> str:
    assert proc.returncode == code, f"exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith(f"segtrain: {label}:")]
    assert len(lines) == 1, proc.stderr[-3000:]
    return lines[0]


def final_val_dice(run: Path) -> float:
    return read_scalars(run)["val/dice"][-1].value


def assert_each_step_once(run: Path) -> None:
    """Every (tag, step) appears once in the run's event files (``epoch`` is Lightning's bookkeeping, logged with each value)."""
    for tag, values in read_scalars(run).items():
        steps = [v.step for v in values]
        assert tag in ("epoch", "x_axis/epoch") or len(steps) == len(set(steps)), (tag, steps)


def assert_same_run(run: Path, reference: Path) -> None:
    """The resumed run logged the same values at the same steps as the uninterrupted one."""
    ours, theirs = read_scalars(run), read_scalars(reference)
    for tag in ("train/loss", "train/dice", "val/loss", "val/dice", "val/iou", "train/lr-AdamW"):
        assert [v.step for v in ours[tag]] == [v.step for v in theirs[tag]], tag
        for a, b in zip(ours[tag], theirs[tag]):
            assert a.value == pytest.approx(b.value, abs=1e-6), (tag, a.step)


def assert_resumes_like(run: Path, reference: Path, tmp_path: Path, cache_dir: Path,
                        runner=run_cli) -> subprocess.CompletedProcess:
    """``segtrain resume=run`` succeeds and ends as the reference run did, every step logged once."""
    resumed = ok(runner([f"resume={run}"], tmp_path, cache_dir))
    assert final_val_dice(run) == pytest.approx(final_val_dice(reference), abs=1e-6)
    assert_each_step_once(run)
    assert_same_run(run, reference)
    return resumed


def start(run: Path, cache_dir: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "SEGTRAIN_CACHE_DIR": str(cache_dir), "PYTHONWARNINGS": "ignore"}
    return subprocess.Popen([SEGTRAIN, *FAULT_2D, *extra, f"hydra.run.dir={run}"], cwd=run.parent, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def signal_after_first_epoch(proc: subprocess.Popen, signum: int, delay: float) -> tuple[str, str]:
    """Send ``signum`` ``delay`` seconds after the first epoch's line (so, inside the second epoch)."""
    out = []
    for line in proc.stdout:
        out.append(line)
        if line.strip().startswith("0 |"):
            time.sleep(delay)
            proc.send_signal(signum)
            break
    stdout, stderr = proc.communicate(timeout=300)
    return "".join(out) + stdout, stderr


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, cache_dir) -> Path:
    run = tmp_path_factory.mktemp("uninterrupted") / "run"
    proc = ok(run_cli([*FAULT_2D, f"hydra.run.dir={run}"], run.parent, cache_dir))
    assert f"finished 3 epoch(s), {STEPS} steps" in proc.stdout
    assert final_val_dice(run) > 0.3  # a run that learns, so that a difference would show
    return run


def test_sigkill_mid_epoch_then_resume_matches_the_uninterrupted_run(tmp_path, cache_dir, uninterrupted):
    run = tmp_path / "run"
    proc = start(run, cache_dir, "callbacks.model_checkpoint.every_n_train_steps=2")
    signal_after_first_epoch(proc, signal.SIGKILL, delay=0.4)
    assert proc.returncode == -signal.SIGKILL
    resumed = assert_resumes_like(run, uninterrupted, tmp_path, cache_dir)
    assert f"finished 3 epoch(s), {STEPS} steps" in resumed.stdout
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]


def test_sigterm_saves_exits_nonzero_and_the_resume_matches(tmp_path, cache_dir, uninterrupted):
    run = tmp_path / "run"
    proc = start(run, cache_dir)
    stdout, stderr = signal_after_first_epoch(proc, signal.SIGTERM, delay=0.2)
    stopped = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    line = one_error_line(stopped, 128 + signal.SIGTERM, label="stopped")
    assert "SIGTERM at epoch" in line and f"Resume with: segtrain resume={run}" in line
    checkpoint = torch.load(run / "checkpoints" / "interrupted.ckpt", weights_only=True)
    assert 8 <= checkpoint["global_step"] < STEPS
    assert_resumes_like(run, uninterrupted, tmp_path, cache_dir)


def test_exploding_learning_rate_stops_with_one_line_and_finite_checkpoints(tmp_path, cache_dir):
    run = tmp_path / "run"
    proc = run_cli([*FAULT_2D, "optim.optimizer.lr=1e6", f"hydra.run.dir={run}"], tmp_path, cache_dir)
    line = one_error_line(proc, 3)
    assert "non-finite" in line and "at step" in line and "batch cases: case_" in line and "optim.optimizer.lr" in line
    for path in (run / "checkpoints").glob("*.ckpt") if (run / "checkpoints").is_dir() else []:
        state = torch.load(path, weights_only=True)["state_dict"]
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point()), path


def test_nan_after_a_good_epoch_keeps_the_good_checkpoint(tmp_path, cache_dir):
    """A learning rate that explodes in the second epoch: last.ckpt stays the finite state of the first."""
    run = tmp_path / "run"
    presets = tmp_path / "configs" / "optim"
    presets.mkdir(parents=True)
    (presets / "explode.yaml").write_text(  # lr 0.01 through epoch 0 (8 steps), then 1e6: NaN in epoch 1
        "optimizer: {_target_: torch.optim.AdamW, _partial_: true, lr: 0.01}\n"
        "scheduler: {_target_: torch.optim.lr_scheduler.MultiStepLR, _partial_: true, milestones: [8], gamma: 1.0e+8}\n"
        "interval: step\n")
    args = ["--config-dir", str(presets.parent), *FAULT_2D, "optim=explode", f"hydra.run.dir={run}"]
    proc = run_cli(args, tmp_path, cache_dir)
    line = one_error_line(proc, 3)
    assert "its last good checkpoint is kept" in line and "last.ckpt, epoch 0" in line, line
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["epoch"] == 0 and all(torch.isfinite(v).all() for v in last["state_dict"].values() if v.is_floating_point())


@pytest.fixture(scope="module")
def tversky_run(tmp_path_factory, cache_dir) -> Path:
    """A finished 2-epoch run with a non-default loss, to resume in various ways (copy it before changing it)."""
    run = tmp_path_factory.mktemp("tversky") / "run"
    ok(run_cli([*FAULT_2D, "trainer.max_epochs=2", "loss=tversky", "loss.alpha=0.3", f"hydra.run.dir={run}"],
               run.parent, cache_dir))
    return run


def _copy(run: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(run, target)
    return target


def test_resume_takes_the_run_config_and_refuses_a_different_loss(tmp_path, cache_dir, tversky_run):
    run = _copy(tversky_run, tmp_path)
    before = (run / ".hydra" / "config.yaml").read_text()
    line = one_error_line(run_cli([f"resume={run}", "loss=dice"], tmp_path, cache_dir), 2)
    assert "loss.name (tversky → dice)" in line and "would change what the run learns" in line and "resume.allow_changes=true" in line
    line = one_error_line(run_cli([f"resume={run}", "loss.alpha=0.7"], tmp_path, cache_dir), 2)
    assert "loss.alpha (0.3 → 0.7)" in line
    assert (run / ".hydra" / "config.yaml").read_text() == before  # the first launch's record is kept

    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    proc = ok(run_cli([f"resume={run}", "trainer.max_epochs=4"], tmp_path, cache_dir))
    assert "finished 4 epoch(s), 32 steps" in proc.stdout and "schedule now spans 32 steps (was 16)" in proc.stdout
    after = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    changed = [k for k, v in last["state_dict"].items() if k.startswith("net.") and not torch.equal(v, after["state_dict"][k])]
    assert changed  # it trained: the weights moved
    assert all(v.value > 0 for v in read_scalars(run)["train/lr-AdamW"])  # not at the finished schedule's lr of 0
    records = list((run / ".hydra" / "resumed").iterdir())
    assert len(records) == 1  # the refused launches left none
    resumed_cfg = (records[0] / "config.yaml").read_text()
    assert "name: tversky" in resumed_cfg and "alpha: 0.3" in resumed_cfg and "max_epochs: 4" in resumed_cfg
    assert not list((run / "checkpoints").glob("*-v*.ckpt"))
    # the copied folder kept its best score: best.ckpt holds the best val/dice of all four epochs
    best_state = next(v for k, v in after["callbacks"].items() if k.startswith("RunCheckpoint"))
    assert float(best_state["best_model_score"]) == pytest.approx(max(v.value for v in read_scalars(run)["val/dice"]))
    assert best_state["best_model_path"] == str(run / "checkpoints" / "best.ckpt")
    assert f"{run}/checkpoints/best.ckpt (best), {run}/checkpoints/last.ckpt (last, epoch 3)" in proc.stdout
    assert_each_step_once(run)


def test_checkpoint_with_a_different_network_is_one_line(tmp_path, cache_dir, tversky_run):
    run = _copy(tversky_run, tmp_path)
    proc = run_cli([f"resume={run}", "model.channels=[8,16,32,64]", "resume.allow_changes=true"], tmp_path, cache_dir)
    line = one_error_line(proc, 2)
    assert "the checkpoint's network does not fit the model settings" in line and "size mismatch" in line


def test_pickle_payload_is_refused_by_resume_and_predict_without_running_it(tmp_path, cache_dir, tversky_run):
    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'payload-ran'}",))

    checkpoint = torch.load(tversky_run / "checkpoints" / "last.ckpt", weights_only=True)
    checkpoint["segtrain"]["extra"] = Payload()
    evil = tmp_path / "evil.ckpt"
    torch.save(checkpoint, evil)
    train = run_cli([*FAULT_2D, f"ckpt_path={evil}", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path, cache_dir)
    predict = run_cli([f"ckpt_path={evil}", f"input={tmp_path}", f"hydra.run.dir={tmp_path / 'p'}"], tmp_path, cache_dir,
                      program=str(Path(SEGTRAIN).with_name("segtrain-predict")))
    for proc in (train, predict):
        line = one_error_line(proc, 2)
        assert f"ckpt_path={evil} holds Python objects besides tensors (a pickle payload" in line
    assert not (tmp_path / "payload-ran").exists()


@pytest.mark.parametrize("kind", ["text", "empty", "truncated", "tensor", "list"])
def test_broken_checkpoint_is_one_line_before_preflight(tmp_path, cache_dir, tversky_run, kind):
    path = tmp_path / f"{kind}.ckpt"
    if kind == "text":
        path.write_text("not a checkpoint\n")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        data = (tversky_run / "checkpoints" / "last.ckpt").read_bytes()
        path.write_bytes(data[: len(data) // 3])
    else:
        torch.save(torch.zeros(2) if kind == "tensor" else [1, 2], path)
    proc = run_cli([*FAULT_2D, f"ckpt_path={path}", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path, cache_dir)
    line = one_error_line(proc, 2)
    assert f"ckpt_path={path}" in line
    assert "preflight" not in proc.stdout  # found before any case was read


def test_flat_metric_still_refreshes_last_ckpt_every_epoch(tmp_path, cache_dir):
    run = tmp_path / "run"
    proc = ok(run_cli([*FAULT_2D, "optim.optimizer.lr=0", f"hydra.run.dir={run}"], tmp_path, cache_dir))
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 2
    assert "(last, epoch 2)" in proc.stdout


@pytest.mark.parametrize("where", ["file", "proc"])
def test_unwritable_run_folder_is_one_line(tmp_path, cache_dir, where):
    if where == "file":
        (tmp_path / "a-file").write_text("")
        target = tmp_path / "a-file" / "run"
    else:
        target = Path("/proc/segtrain-test-run")
    line = one_error_line(run_cli([*FAULT_2D, f"hydra.run.dir={target}"], tmp_path, cache_dir), 2)
    assert f"hydra.run.dir={target}: cannot create the run folder there" in line


def test_resume_of_an_empty_or_foreign_folder_is_one_line(tmp_path, cache_dir):
    line = one_error_line(run_cli([f"resume={tmp_path}"], tmp_path, cache_dir), 2)
    assert f"resume={tmp_path}: not a segtrain run directory" in line


def test_a_new_run_into_a_folder_with_checkpoints_is_refused(tmp_path, cache_dir, tversky_run):
    run = _copy(tversky_run, tmp_path)
    before = (run / "checkpoints" / "best.ckpt").read_bytes()
    line = one_error_line(run_cli([*FAULT_2D, f"hydra.run.dir={run}"], tmp_path, cache_dir), 2)
    assert f"hydra.run.dir={run} already holds a run" in line and f"segtrain resume={run}" in line
    assert (run / "checkpoints" / "best.ckpt").read_bytes() == before


def test_ddp_sigterm_stops_every_rank_and_the_resume_matches(tmp_path, cache_dir):
    """Two CPU processes: the ranks agree on the step, rank 0 reports once, the resumed run equals an uninterrupted one."""
    ddp = ["trainer.accelerator=cpu", "trainer.devices=2"]
    reference = tmp_path / "reference"
    ok(run_cli([*FAULT_2D, *ddp, f"hydra.run.dir={reference}"], tmp_path, cache_dir))
    run = tmp_path / "run"
    proc = start(run, cache_dir, *ddp)
    stdout, stderr = signal_after_first_epoch(proc, signal.SIGTERM, delay=0.2)
    one_error_line(subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr), 143, label="stopped")
    assert_resumes_like(run, reference, tmp_path, cache_dir, runner=run_process)  # the run's own devices=2: DDP


def test_without_checkpointing_the_run_still_trains(tmp_path, cache_dir):
    run = tmp_path / "run"
    proc = ok(run_cli([*FAULT_2D, "trainer.max_epochs=1", "trainer.enable_checkpointing=false", f"hydra.run.dir={run}"],
                      tmp_path, cache_dir))
    assert "finished 1 epoch(s)" in proc.stdout and not (run / "checkpoints").exists()


# -- SLURM: a stop requeues the job ------------------------------------------------------------------------------
SLURM_ENV = {"SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1", "SLURM_JOB_NAME": "segtrain",
             "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_NODELIST": "localhost"}
# trainer=slurm as on a node, scaled to one CPU process (still DDP, with SLURM's ranks and address)
SLURM_ONE_CPU = ["trainer=slurm", "trainer.num_nodes=1", "trainer.devices=1", "trainer.accelerator=cpu",
                 "trainer.precision=32-true", "trainer.sync_batchnorm=false"]


def fake_slurm(tmp_path: Path) -> tuple[dict, Path, str]:
    """SLURM's job environment, an ``scontrol`` on PATH that records its arguments in the returned file, the job id
    (Lightning takes the DDP port from it: one per test, so that tests in parallel do not share one)."""
    import random

    job = str(random.randint(100000, 999999))
    bin_dir, calls = tmp_path / "bin", tmp_path / "scontrol_calls.txt"
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> "{calls}"\n')
    scontrol.chmod(0o755)
    return {**SLURM_ENV, "SLURM_JOB_ID": job, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}, calls, job


@pytest.mark.parametrize("signum, requeue_on", [(signal.SIGUSR1, None), (signal.SIGTERM, None), (signal.SIGUSR2, None),
                                                (signal.SIGTERM, "[SIGUSR1]")])
def test_slurm_signal_saves_a_checkpoint_and_requeues_the_job(tmp_path, cache_dir, signum, requeue_on):
    """Under trainer=slurm a SIGUSR1 (--signal=USR1@90), SIGUSR2 (submitit) or SIGTERM (preemption) writes
    interrupted.ckpt at a clean point, then rank 0 runs `scontrol requeue <job>`; the run resumes from it."""
    env, calls, job = fake_slurm(tmp_path)
    run = tmp_path / "run"
    extra = [f"slurm.requeue_on={requeue_on}"] if requeue_on else []
    proc = subprocess.Popen([SEGTRAIN, *FAULT_2D, *SLURM_ONE_CPU, *extra, f"hydra.run.dir={run}"], cwd=tmp_path,
                            env={**os.environ, "SEGTRAIN_CACHE_DIR": str(cache_dir), "PYTHONWARNINGS": "ignore", **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stdout, stderr = signal_after_first_epoch(proc, signum, delay=0.2)
    line = one_error_line(subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr), 128 + signum,
                          label="stopped")
    checkpoint = torch.load(run / "checkpoints" / "interrupted.ckpt", weights_only=True)
    assert 8 <= checkpoint["global_step"] < STEPS
    assert not list(run.glob("hpc_ckpt_*.ckpt"))  # Lightning's mid-step save is replaced by the clean point
    if requeue_on:  # SIGTERM not listed: saved, not requeued
        assert not calls.exists() and f"Resume with: segtrain resume={run}" in line
        return
    assert calls.read_text().split() == ["requeue", job]
    assert f"SLURM job {job} requeued" in line
    resumed = ok(run_process([f"resume={run}"], tmp_path, cache_dir, env=env))  # the requeued job script's command
    assert f"finished 3 epoch(s), {STEPS} steps" in resumed.stdout, resumed.stdout[-1500:]
    assert_each_step_once(run)


def test_an_unknown_requeue_signal_is_one_line_before_preflight(tmp_path, cache_dir):
    proc = run_cli([*FAULT_2D, "slurm.requeue_on=[SIGUSR1,SIGFOO]", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path, cache_dir)
    line = one_error_line(proc, 2)
    assert line == "segtrain: error: slurm.requeue_on: unknown signal SIGFOO; use names such as SIGUSR1, SIGUSR2, SIGTERM"
    assert "preflight" not in proc.stdout and not (tmp_path / "run").exists()
