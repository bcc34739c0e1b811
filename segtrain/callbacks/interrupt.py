"""No lost work on preemption or Ctrl-C: stop at the next clean point with a resumable checkpoint.

SLURM preemption sends SIGTERM (or, with ``--signal=USR1@90``, SIGUSR1 first); a user presses
Ctrl-C. ``GracefulStop`` turns each into the same sequence:

1. the signal only sets a flag (a second Ctrl-C stops at once, keeping the last good checkpoint);
2. at the next clean point the run writes ``checkpoints/interrupted.ckpt`` through
   ``save_resume_point``: after the current training step, or, when the signal came during
   validation or the last step of an epoch, after that validation (validation is never cut short,
   so its metrics and ``best.ckpt`` stay whole);
3. when the next training step would start (after Lightning has logged the last one, so the
   event files hold every step up to the checkpoint), it raises ``RunInterrupted``: the CLI prints
   how to resume and exits with 128 + the signal number (143 SIGTERM, 138 SIGUSR1, 140 SIGUSR2, 130 SIGINT), so
   job scripts see the run did not finish. A signal during the last epoch's last validation lets
   the run finish (exit 0).

In a SLURM job (Lightning's ``SLURMEnvironment`` with ``auto_requeue``, its default there and
``trainer=slurm``'s), a stop by a signal of ``slurm.requeue_on`` (SIGUSR1 from ``--signal=USR1@90``,
SIGUSR2 from submitit's launcher, SIGTERM from preemption or the time limit) also asks SLURM to
requeue the job (``scontrol requeue <job id>``, rank 0, after the checkpoint is written): the job
starts again and resumes (``segtrain resume=<run dir>`` in a job script; a sweep's job resumes by
itself). Lightning's own handler (an ``hpc_ckpt_<n>.ckpt`` written inside the signal handler, in the
middle of a step) is replaced, so every stop goes through the same clean point.

A crash (any other exception) between two training steps also writes ``interrupted.ckpt`` (its
state is as clean as a signal's); a crash inside a step or a validation writes nothing, and the
newest ``last.ckpt`` is the resume point. In DDP the ranks agree on the stop through one
all-reduce per step; the signal is forwarded to the worker processes Lightning started.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import signal
import subprocess
import threading
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Checkpoint

from segtrain.callbacks.checkpoint import save_resume_point
from segtrain.errors import ConfigError, RunInterrupted, SegtrainError

log = logging.getLogger("segtrain")

SIGNALS = tuple(s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGUSR1", None),
                            getattr(signal, "SIGUSR2", None), signal.SIGINT) if s)


class GracefulStop(Checkpoint):
    """Stops on SIGTERM, SIGUSR1, SIGUSR2 or Ctrl-C after writing ``<dirpath>/<filename>.ckpt`` (see the module docstring).

    A ``Checkpoint`` so that Lightning runs its hooks after ``RunCheckpoint``'s: a stop at the end of
    validation comes after ``best.ckpt`` and ``last.ckpt`` of that validation are written.
    """

    def __init__(self, dirpath: str | Path, filename: str = "interrupted", requeue_on: list[str | int] | tuple = ()):
        self.path = Path(dirpath) / f"{filename}.ckpt"
        unknown = [s for s in requeue_on if isinstance(s, str) and not isinstance(getattr(signal, s, None), signal.Signals)]
        if unknown:
            raise ConfigError(f"slurm.requeue_on: unknown signal {unknown[0]}; use names such as SIGUSR1, SIGUSR2, SIGTERM")
        self.requeue_on = {int(getattr(signal, s) if isinstance(s, str) else s) for s in requeue_on}
        self._requeued: str | None = None
        self.requested: int | None = None
        self.hard_stop = False
        self._previous: dict[int, object] = {}
        self._trainer = None
        self._in_step = False
        self._in_validation = False
        self._validated_step: int | None = None
        self._saved: tuple[int, int, int] | None = None  # (signal, epoch, step) of the checkpoint written for the stop

    # -- signals -------------------------------------------------------------------------------------
    def on_train_start(self, trainer, pl_module) -> None:
        # Lightning registers its own handlers when fit starts; ours replace them for the run's duration.
        if threading.current_thread() is not threading.main_thread():
            return
        self._trainer = trainer
        for signum in SIGNALS:
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame) -> None:
        if signum == signal.SIGINT and self.requested == signal.SIGINT:
            self.hard_stop = True
            raise KeyboardInterrupt
        first = self.requested is None
        if first:
            self.requested = signum
            launcher = getattr(getattr(self._trainer, "strategy", None), "launcher", None)
            if launcher is not None and hasattr(launcher, "kill"):
                launcher.kill(signum)  # DDP worker processes started by Lightning stop at the same step
            when = "after validation" if self._in_validation else "after this training step"
            extra = " (Ctrl-C again stops at once, without saving)" if signum == signal.SIGINT else ""
            log.warning("segtrain: received %s: saving a checkpoint and stopping %s%s", signal.Signals(signum).name, when, extra)

    def _restore_handlers(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self._restore_handlers()

    def _agreed_signal(self, trainer) -> int | None:
        """The stop signal, agreed across DDP ranks (the largest number any rank received)."""
        flag = self.requested or 0
        if trainer.world_size > 1:
            tensor = torch.tensor(flag, device=trainer.strategy.root_device)
            flag = int(trainer.strategy.reduce(tensor, reduce_op="max"))
        return flag or None

    def _save(self, trainer, signum: int) -> None:
        """Write the checkpoint now; the run stops when the next step would start, once Lightning has logged this one."""
        self._restore_handlers()
        save_resume_point(trainer, self.path)
        self._saved = (signum, trainer.current_epoch, trainer.global_step)
        if signum in self.requeue_on and _slurm_requeues(trainer) and trainer.is_global_zero:
            self._requeued = request_requeue()

    # -- clean points ---------------------------------------------------------------------------------
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if self._saved is not None:
            signum, epoch, step = self._saved
            then = (f"SLURM job {self._requeued} requeued: it resumes when it starts again" if self._requeued else
                    f"Resume with: segtrain resume={self.path.parent.parent}")
            raise RunInterrupted(f"{signal.Signals(signum).name} at epoch {epoch}, step {step}; saved {self.path}. {then}",
                                 signum)
        self._in_step = True

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self._in_step = False
        if batch_idx + 1 >= trainer.num_training_batches:
            return  # the epoch ends: stop after its validation (or at the epoch end)
        signum = self._agreed_signal(trainer) if self._saved is None else None
        if signum:
            self._save(trainer, signum)

    def on_validation_start(self, trainer, pl_module) -> None:
        self._in_validation = True

    def on_validation_end(self, trainer, pl_module) -> None:
        self._in_validation = False
        if not trainer.sanity_checking:
            self._validated_step = trainer.global_step
            signum = self._agreed_signal(trainer) if self._saved is None else None
            if signum:
                self._save(trainer, signum)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self._validated_step == trainer.global_step:
            return  # a state after validation resumes cleanly only from its end: stop at the next step
        signum = self._agreed_signal(trainer) if self._saved is None else None
        if signum:
            self._save(trainer, signum)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._restore_handlers()
        full_disk = isinstance(exception, OSError) and exception.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
        crash = not isinstance(exception, (SegtrainError, KeyboardInterrupt, SystemExit)) and not full_disk
        between_steps = not (self._in_step or self._in_validation)
        if crash and between_steps and trainer.world_size == 1 and trainer.global_step > 0:
            try:
                save_resume_point(trainer, self.path)
            except Exception as err:  # noqa: BLE001 - never hide the crash behind a failed save
                log.warning("segtrain: could not save %s after the crash: %s", self.path, err)
                return
            log.warning("segtrain: the run crashed; saved %s. Resume with: segtrain resume=%s", self.path, self.path.parent.parent)

    def state_dict(self) -> dict:
        return {}


def _slurm_requeues(trainer) -> bool:
    """The run is a SLURM job that may requeue itself (Lightning's ``SLURMEnvironment(auto_requeue=True)``)."""
    from lightning.fabric.plugins.environments import SLURMEnvironment

    environment = getattr(trainer.strategy, "cluster_environment", None) or getattr(
        getattr(trainer, "_accelerator_connector", None), "cluster_environment", None)
    return isinstance(environment, SLURMEnvironment) and bool(environment.auto_requeue)


def slurm_job_id() -> str | None:
    """The job to requeue: ``<array job>_<task>`` in a job array, else ``SLURM_JOB_ID``."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    job = f"{array}_{task}" if array and task else os.environ.get("SLURM_JOB_ID")
    return job if job and re.fullmatch(r"[0-9_]+", job) else None


def request_requeue() -> str | None:
    """``scontrol requeue <job>``: the job id when SLURM took the request, else None (logged)."""
    job = slurm_job_id()
    if job is None:
        log.warning("segtrain: no SLURM job id in the environment; the job is not requeued")
        return None
    try:
        result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        log.warning("segtrain: scontrol requeue %s failed (%s); resume by hand: segtrain resume=<run dir>", job, err)
        return None
    if result.returncode != 0:
        said = (result.stderr or result.stdout).strip()
        if "pending execution" in said.lower():  # SLURM requeued it already (a preemption, or scontrol requeue)
            return job
        log.warning("segtrain: scontrol requeue %s failed (exit %d: %s); resume by hand: segtrain resume=<run dir>",
                    job, result.returncode, said[:200])
        return None
    log.warning("segtrain: requeued SLURM job %s (scontrol requeue)", job)
    return job
