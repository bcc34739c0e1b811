"""A real SLURM (tests/helpers/slurm.py: munged, slurmctld and slurmd on localhost) instead of a fake scontrol.

A 2-run sweep goes through ``hydra/launcher=slurm`` (hydra-submitit-launcher: one SLURM job per run). One job
is preempted with ``scontrol requeue`` after its first checkpoint: SLURM sends SIGTERM, segtrain saves
``interrupted.ckpt`` at the next clean point, SLURM starts the job again, submitit runs the run's config again
in its folder, and the run resumes there. The preempted run then logged every step once, and the same values
as the same run trained without a stop.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from helpers.cli import SEGTRAIN, cli_env, run_process
from helpers.slurm import SlurmUnavailable, one_node_cluster
from test_faults import FAULT_2D, SLURM_ENV, assert_each_step_once, assert_same_run

pytestmark = pytest.mark.slow

pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="needs the sweep extra (hydra-submitit-launcher)")

# trainer=slurm as on a node, scaled to one CPU process; one torch thread, so that two processes agree to the bit
RUN = [*FAULT_2D, "trainer.max_epochs=6", "trainer=slurm", "trainer.num_nodes=1", "trainer.devices=1",
       "trainer.accelerator=cpu", "trainer.precision=32-true", "trainer.sync_batchnorm=false"]
LAUNCHER = ["hydra/launcher=slurm", "hydra.launcher.partition=debug", "hydra.launcher.cpus_per_task=1",
            "hydra.launcher.mem_gb=null", "hydra.launcher.gpus_per_node=null", "hydra.launcher.timeout_min=10",
            "hydra.launcher.signal_delay_s=10", "hydra.launcher.setup=['export OMP_NUM_THREADS=1']"]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    try:
        with one_node_cluster(tmp_path_factory.mktemp("slurm")) as env:
            yield env
    except SlurmUnavailable as err:
        pytest.skip(f"no real SLURM here: {err}")


def _job_of(sweep: Path, index: int) -> str | None:
    """The SLURM job of the sweep's run ``index``: submitit's folder ``.submitit/<array job>_<index>``."""
    folder = sweep / ".submitit"
    found = [p.name for p in folder.iterdir() if p.name.endswith(f"_{index}")] if folder.is_dir() else []
    return found[0] if found else None


def test_a_sweep_on_slurm_with_one_run_preempted_resumes_it_exactly(tmp_path, cache_dir, slurm):
    sweep = tmp_path / "sweep"
    env = {**cli_env(cache_dir), **slurm, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([SEGTRAIN, "-m", *RUN, *LAUNCHER, "seed=1,2", f"hydra.sweep.dir={sweep}"], cwd=tmp_path,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    job = None
    while time.time() < deadline:  # preempt run 0 after its first checkpoint, while it trains
        assert proc.poll() is None, proc.communicate()
        runs = sorted(p for p in sweep.glob("0_*") if (p / "checkpoints" / "last.ckpt").exists()) if sweep.is_dir() else []
        job = _job_of(sweep, 0) if runs else None
        if job:
            break
        time.sleep(0.2)
    assert job, "run 0 wrote no checkpoint in 5 minutes"
    requeue = subprocess.run(["scontrol", "requeue", job], env=slurm, capture_output=True, text=True)
    assert requeue.returncode == 0, requeue.stderr
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, f"{out[-2000:]}\n{err[-3000:]}"
    assert "2 of 2 run(s) finished" in out + err
    run = next(sweep.glob("0_*"))
    logs = "".join(p.read_text() for p in (sweep / ".submitit").rglob("*.out"))
    logs += "".join(p.read_text() for p in (sweep / ".submitit").rglob("*.err"))
    assert f"SLURM job {job} requeued: it resumes when it starts again" in logs and "failed" not in logs
    assert "holds checkpoints/interrupted.ckpt: resuming that run" in logs
    assert not (run / "checkpoints" / "interrupted.ckpt").exists() or (run / "checkpoints" / "last.ckpt").stat().st_mtime >= \
        (run / "checkpoints" / "interrupted.ckpt").stat().st_mtime
    assert_each_step_once(run)
    # the same run without a stop (the same trainer, one process, one thread) logged the same values
    reference = tmp_path / "reference"
    alone = {**SLURM_ENV, "SLURM_JOB_ID": str(os.getpid() + 10**6), "OMP_NUM_THREADS": "1"}  # a job of one task, never stopped
    local = run_process([*RUN, "seed=1", f"hydra.run.dir={reference}"], tmp_path, cache_dir, env=alone)
    assert local.returncode == 0, local.stderr[-3000:]
    assert_same_run(run, reference)
