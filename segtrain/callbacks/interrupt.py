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
   how to resume and exits with 128 + the signal number (143 SIGTERM, 138 SIGUSR1, 130 SIGINT), so
   job scripts see the run did not finish. A signal during the last epoch's last validation lets
   the run finish (exit 0).

Under SLURM with Lightning's ``SLURMEnvironment(auto_requeue=True)`` (``trainer=slurm``), the
requeue signal stays with Lightning, which saves its own checkpoint and requeues the job.

A crash (any other exception) between two training steps also writes ``interrupted.ckpt`` (its
state is as clean as a signal's); a crash inside a step or a validation writes nothing, and the
newest ``last.ckpt`` is the resume point. In DDP the ranks agree on the stop through one
all-reduce per step; the signal is forwarded to the worker processes Lightning started.
"""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Checkpoint

from segtrain.callbacks.checkpoint import save_resume_point
from segtrain.errors import RunInterrupted, SegtrainError

log = logging.getLogger("segtrain")

SIGNALS = tuple(s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGUSR1", None), signal.SIGINT) if s)


class GracefulStop(Checkpoint):
    """Stops on SIGTERM, SIGUSR1 or Ctrl-C after writing ``<dirpath>/<filename>.ckpt`` (see the module docstring).

    A ``Checkpoint`` so that Lightning runs its hooks after ``RunCheckpoint``'s: a stop at the end of
    validation comes after ``best.ckpt`` and ``last.ckpt`` of that validation are written.
    """

    def __init__(self, dirpath: str | Path, filename: str = "interrupted"):
        self.path = Path(dirpath) / f"{filename}.ckpt"
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
        requeue = _slurm_requeue_signal(trainer)
        for signum in SIGNALS:
            if signum == requeue:
                continue
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

    # -- clean points ---------------------------------------------------------------------------------
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if self._saved is not None:
            signum, epoch, step = self._saved
            raise RunInterrupted(f"{signal.Signals(signum).name} at epoch {epoch}, step {step}; saved {self.path}. "
                                 f"Resume with: segtrain resume={self.path.parent.parent}", signum)
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
        crash = not isinstance(exception, (SegtrainError, KeyboardInterrupt, SystemExit))
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


def _slurm_requeue_signal(trainer) -> int | None:
    from lightning.fabric.plugins.environments import SLURMEnvironment

    environment = getattr(trainer.strategy, "cluster_environment", None) or getattr(
        getattr(trainer, "_accelerator_connector", None), "cluster_environment", None)
    if isinstance(environment, SLURMEnvironment) and environment.auto_requeue:
        return environment.requeue_signal
    return None
