"""Reliability, round two: what a hostile trial still broke. Two runs in one folder, a full disk while saving,
tracebacks that became one line, and what refused runs leave behind (docs/reliability.md)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import torch

from helpers.cli import SEGTRAIN, cli_env, run_cli
from test_faults import FAULT_2D, ok, one_error_line

pytestmark = pytest.mark.slow


def _wait_for(path: Path, proc: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.time() + seconds
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, f"{path} did not appear"
        time.sleep(0.05)


# -- two runs in one folder ----------------------------------------------------------------------------
def test_a_second_run_in_a_folder_in_use_stops_naming_the_holder(tmp_path, cache_dir):
    run = tmp_path / "run"
    first = subprocess.Popen([SEGTRAIN, *FAULT_2D, "trainer.max_epochs=30", f"hydra.run.dir={run}"], cwd=tmp_path,
                             env=cli_env(cache_dir), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(run / "checkpoints" / "last.ckpt", first)
        # the requeue that overlaps a job still running: the same resume, started again
        second = run_cli([f"resume={run}"], tmp_path, cache_dir)
        line = one_error_line(second, 2)
        assert f"{run} is in use by another run (pid {first.pid} on host " in line and "choose another folder" in line
        holder = json.loads((run / ".segtrain.lock").read_text())
        assert holder["pid"] == first.pid
        assert first.poll() is None  # the first run goes on, untouched
    finally:
        first.kill()  # SIGKILL: its lock dies with it
        first.communicate()
    # a lock left by a dead process is taken over: the resume runs
    epoch = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["epoch"]
    line = one_error_line(run_cli([f"resume={run}", "trainer.max_epochs=1"], tmp_path, cache_dir), 2)  # and not a traceback
    assert f"trainer.max_epochs=1: the run's checkpoint is at epoch {epoch}" in line
    proc = ok(run_cli([f"resume={run}", f"trainer.max_epochs={epoch + 2}"], tmp_path, cache_dir))
    assert f"finished {epoch + 2} epoch(s)" in proc.stdout
    assert json.loads((run / ".segtrain.lock").read_text())["pid"] == os.getpid()  # in-process run: this pid


def test_the_lock_is_per_folder_and_released_when_the_run_ends(tmp_path):
    from segtrain.errors import ConfigError
    from segtrain.run_folder import RunFolderLock, takes_the_lock

    with RunFolderLock(tmp_path / "a"):
        with pytest.raises(ConfigError, match=r"is in use by another run \(pid \d+ on host .*, since "):
            RunFolderLock(tmp_path / "a").acquire()
        RunFolderLock(tmp_path / "b").acquire().release()  # another folder is free
    RunFolderLock(tmp_path / "a").acquire().release()  # released at the end
    env = {k: os.environ.pop(k) for k in ("LOCAL_RANK", "SLURM_PROCID", "NODE_RANK") if k in os.environ}
    try:
        assert takes_the_lock(1)
        os.environ["SLURM_PROCID"] = "2"
        assert takes_the_lock(1)  # srun started copies: each is its own run, each must take it
        assert not takes_the_lock(4)  # task 2 of a 4-rank DDP job: rank 0 holds it
        os.environ["LOCAL_RANK"] = "1"
        assert not takes_the_lock(None)  # a DDP worker Lightning started
    finally:
        for key in ("LOCAL_RANK", "SLURM_PROCID"):
            os.environ.pop(key, None)
        os.environ.update(env)


# -- a full disk while saving ----------------------------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path):
    """A real filesystem that fills up: a 6 MiB tmpfs (skipped where mounting is not allowed)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mount)], capture_output=True, text=True)
    if proc.returncode:
        pytest.skip(f"cannot mount a small tmpfs to fill (needs CAP_SYS_ADMIN): {proc.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_a_full_disk_while_saving_is_one_line_exit_2_and_the_previous_checkpoint_stays(tmp_path, cache_dir, small_disk):
    run = small_disk / "run"
    proc = subprocess.Popen([SEGTRAIN, *FAULT_2D, "trainer.max_epochs=40", "data.patches_per_epoch=64",
                             f"hydra.run.dir={run}"], cwd=tmp_path, env=cli_env(cache_dir),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(run / "checkpoints" / "last.ckpt", proc)
    before = (run / "checkpoints" / "last.ckpt").read_bytes()
    with open(small_disk / "filler", "wb") as handle:  # fill what is left
        try:
            while True:
                handle.write(b"\0" * 65536)
                handle.flush()
        except OSError:
            pass
    out, err = proc.communicate(timeout=300)
    result = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    line = one_error_line(result, 2)
    # the first write to fail is the event file's (flushed before each checkpoint) or the checkpoint's own
    assert "cannot write" in line and "the disk is full" in line and "checkpoint is intact" in line, line
    assert len([x for x in err.splitlines() if x.strip()]) <= 3, err  # one line, not 30 of traceback
    (small_disk / "filler").unlink()
    kept = run / "checkpoints" / "last.ckpt"
    assert kept.read_bytes() == before or torch.load(kept, weights_only=True)["state_dict"]  # whole, loadable
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]  # no half-written temporaries


# -- tracebacks that are one line now ------------------------------------------------------------------
def test_a_read_only_cache_with_the_synthetic_data_is_one_line(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    cache.chmod(0o555)
    try:
        if os.access(cache, os.W_OK):
            pytest.skip("this user writes into read-only folders (root): no read-only cache to test")
        proc = run_cli([*FAULT_2D, f"hydra.run.dir={tmp_path / 'run'}"], tmp_path, cache)
    finally:
        cache.chmod(0o755)
    line = one_error_line(proc, 2)
    assert "SEGTRAIN_CACHE_DIR" in line and str(cache) in line
    assert not (tmp_path / "run").exists()


def test_a_read_only_cache_with_the_synthetic_data_is_one_line_as_root(tmp_path, monkeypatch):
    """As root a mode bit does not stop a write: the cache folder is a file in the way instead."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    proc = run_cli([*FAULT_2D, f"hydra.run.dir={tmp_path / 'run'}"], tmp_path, blocker / "cache")
    line = one_error_line(proc, 2)
    assert "SEGTRAIN_CACHE_DIR" in line and "cannot write the synthetic dataset" in line
    assert not (tmp_path / "run").exists()


def test_max_epochs_minus_one_is_no_limit_and_a_schedule_without_end_is_one_line(tmp_path, cache_dir):
    line = one_error_line(run_cli([*FAULT_2D, "trainer.max_epochs=-1", f"hydra.run.dir={tmp_path / 'run'}"],
                                  tmp_path, cache_dir), 2)
    assert "trainer.max_epochs=-1" in line and "no end" in line and "trainer.max_steps" in line
    assert not (tmp_path / "run").exists()
    proc = ok(run_cli([*FAULT_2D, "trainer.max_epochs=-1", "trainer.max_steps=10", f"hydra.run.dir={tmp_path / 'run'}"],
                      tmp_path, cache_dir))
    assert "10 steps" in proc.stdout


# -- messages and leftovers ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tversky_run(tmp_path_factory, cache_dir) -> Path:
    run = tmp_path_factory.mktemp("tversky") / "run"
    ok(run_cli([*FAULT_2D, "trainer.max_epochs=1", "loss=tversky", "loss.alpha=0.3", f"hydra.run.dir={run}"],
               run.parent, cache_dir))
    return run


def test_a_refused_resume_leaves_no_empty_resumed_folder(tmp_path, cache_dir, tversky_run):
    run = tmp_path / "copy"
    shutil.copytree(tversky_run, run)
    one_error_line(run_cli([f"resume={run}", "loss.alpha=0.7"], tmp_path, cache_dir), 2)
    assert not (run / ".hydra" / "resumed").exists()


def test_a_refused_bad_data_run_leaves_no_empty_runs_folder(tmp_path, cache_dir):
    logs = tmp_path / "logs"
    proc = run_cli(["data=nifti", f"data.root={tmp_path / 'missing'}", f"paths.log_dir={logs}"], tmp_path, cache_dir)
    one_error_line(proc, 2)
    assert not (logs / "train").exists()


def test_a_changed_loss_is_named_key_by_key(tmp_path, cache_dir, tversky_run):
    run = tmp_path / "copy"
    shutil.copytree(tversky_run, run)
    line = one_error_line(run_cli([f"resume={run}", "loss=dice"], tmp_path, cache_dir), 2)
    assert "loss.name (tversky → dice)" in line and "loss.alpha (0.3 → absent)" in line and "{" not in line


def test_a_removed_case_is_named_as_removed(tmp_path, cache_dir):
    from test_data_factory import nnunet_dataset

    root = nnunet_dataset(tmp_path / "ds", num_cases=8)
    run = tmp_path / "run"
    tiny = ["model=unet", "optim=adamw", "model.channels=[4,8,16,32]", "data.patch_size=[8,8,8]", "data.batch_size=2",
            "data.patches_per_epoch=2", "trainer.max_epochs=1", "trainer.enable_progress_bar=false"]
    ok(run_cli(["data=nifti", f"data.root={root}", *tiny, f"hydra.run.dir={run}"], tmp_path, cache_dir))
    removed = sorted((root / "imagesTr").iterdir())[3]
    case = removed.name.replace("_0000.nii.gz", "")
    removed.unlink()
    (root / "labelsTr" / f"{case}.nii.gz").unlink()
    line = one_error_line(run_cli([f"resume={run}", "trainer.max_epochs=2"], tmp_path, cache_dir), 2)
    assert f"1 case of the run is missing from the dataset now: {case}" in line, line
    assert "the run did not have" not in line


def test_a_truncated_checkpoint_message_is_a_whole_sentence(tmp_path, cache_dir, tversky_run):
    data = (tversky_run / "checkpoints" / "last.ckpt").read_bytes()
    path = tmp_path / "truncated.ckpt"
    path.write_bytes(data[: len(data) // 3])
    line = one_error_line(run_cli([*FAULT_2D, f"ckpt_path={path}", f"hydra.run.dir={tmp_path / 'run'}"],
                                  tmp_path, cache_dir), 2)
    assert line.endswith("(PytorchStreamReader failed reading zip archive: failed finding central directory); "
                         "use another checkpoint of the run"), line
