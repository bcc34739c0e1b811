"""The run's checkpoints: ``best.ckpt`` by the monitored metric, ``last.ckpt`` at every epoch end.

Lightning's ``ModelCheckpoint(save_last=True)`` rewrites ``last.ckpt`` only when the best one
changes, so a run whose metric stalls keeps a stale resume point. ``RunCheckpoint`` keeps
Lightning's best-model logic and writes ``last.ckpt`` itself, at the points from which Lightning
resumes without repeating or skipping work:

- after validation (``on_validation_end``), where Lightning's own ``ModelCheckpoint`` saves;
- at the end of an epoch without validation (``on_train_epoch_end``);
- every ``every_n_train_steps`` training steps when asked, after the step (mid-epoch resume: the
  training loader and the metrics restore their position, see ``segtrain.data.datamodule``).

Every write goes through ``save_resume_point``: the weights are checked for NaN/Inf on every rank
(``NonFiniteError``, nothing written, the previous file kept), the loggers are flushed (a resume
drops every event logged after the checkpoint, ``segtrain.events.truncate_events``), and the file is
written atomically by ``SafeCheckpointIO``. Names never get ``-v1`` suffixes, and a run directory
that was copied or moved keeps its best-model bookkeeping on resume.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import ModelCheckpoint

from segtrain.checkpoints import nonfinite_tensors
from segtrain.files import remove_stale_temporaries
from segtrain.errors import NonFiniteError


def save_resume_point(trainer, path: str | Path) -> None:
    """Write a resumable checkpoint at ``path`` (all ranks call it; rank 0 writes)."""
    bad = nonfinite_tensors(trainer.lightning_module.state_dict().items())
    if bad:
        raise NonFiniteError(
            f"the weights hold NaN/Inf at step {trainer.global_step} ({len(bad)} tensor(s), first: {bad[0]}); "
            f"{Path(path).name} was not written and the previous checkpoint is kept. Likely causes: a learning rate "
            "too high (optim.optimizer.lr), extreme image intensities, or fp16 overflow (trainer.precision=bf16-mixed)"
        )
    for logger in trainer.loggers:  # events up to here are on disk before the checkpoint that follows them
        logger.save()
    trainer.save_checkpoint(str(path), weights_only=False)


class RunCheckpoint(ModelCheckpoint):
    """``best.ckpt`` (top-1 by ``monitor``) and ``last.ckpt`` (the newest state at every epoch end).

    Args:
        dirpath: the run's checkpoint folder.
        monitor, mode: the metric that picks ``best.ckpt`` (``val/dice``, ``max``).
        filename: the best checkpoint's name without ``.ckpt``.
        last_name: the resume point's name without ``.ckpt``.
        every_n_train_steps: also write ``last.ckpt`` every N training steps (None or 0: only at epoch ends).
    """

    def __init__(self, dirpath: str | Path, monitor: str = "val/dice", mode: str = "max", filename: str = "best",
                 last_name: str = "last", every_n_train_steps: int | None = None):
        if every_n_train_steps is not None and int(every_n_train_steps) < 0:
            raise ValueError(f"callbacks.model_checkpoint.every_n_train_steps={every_n_train_steps} must be >= 0 (or null)")
        super().__init__(dirpath=str(dirpath), filename=filename, monitor=monitor, mode=mode, save_top_k=1,
                         save_last=False, auto_insert_metric_name=False, enable_version_counter=False,
                         save_on_train_epoch_end=False)  # best.ckpt needs the validation metrics
        self.last_path = Path(dirpath) / f"{last_name}.ckpt"
        self.every_n_steps = int(every_n_train_steps or 0)
        self.last_epoch_saved: int | None = None   # epoch of the newest last.ckpt (for messages)
        self._last_step_saved: int | None = None

    @property
    def state_key(self) -> str:
        # Stable when every_n_train_steps (or anything but the metric) changes between a run and its resume.
        return self._generate_state_key(monitor=self.monitor, mode=self.mode)

    def setup(self, trainer, pl_module, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if trainer.is_global_zero and self.dirpath:
            remove_stale_temporaries(self.dirpath)  # what a killed writer may have left

    def _fitting(self, trainer) -> bool:
        from lightning.pytorch.trainer.states import TrainerFn

        return trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking and not trainer.fast_dev_run

    def write_last(self, trainer) -> None:
        save_resume_point(trainer, self.last_path)
        self._last_step_saved = trainer.global_step
        self.last_epoch_saved = trainer.current_epoch
        self.last_model_path = str(self.last_path)

    def on_validation_end(self, trainer, pl_module) -> None:
        super().on_validation_end(trainer, pl_module)  # best.ckpt
        if self._fitting(trainer):
            self.write_last(trainer)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._fitting(trainer) and self._last_step_saved != trainer.global_step:  # no validation ended this epoch
            self.write_last(trainer)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        last_batch = batch_idx + 1 >= trainer.num_training_batches  # the epoch end writes it
        if self.every_n_steps and self._fitting(trainer) and not last_batch and trainer.global_step % self.every_n_steps == 0:
            self.write_last(trainer)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Lightning drops the best-model bookkeeping when the folder moved; a copied or moved run folder keeps it.

        The paths are mapped to this folder when its best checkpoint is there (the run was copied or
        moved); otherwise this is a new run started from a checkpoint, with bookkeeping of its own.
        """
        old = state_dict.get("dirpath")
        if old and self.dirpath and os.path.abspath(old) != os.path.abspath(self.dirpath):
            state_dict = _relocated(state_dict, str(old), str(self.dirpath))
            if not os.path.isfile(state_dict.get("best_model_path") or ""):
                return
        super().load_state_dict(state_dict)


def _relocated(state: dict[str, Any], old: str, new: str) -> dict[str, Any]:
    def move(path):
        if isinstance(path, str) and path and os.path.dirname(os.path.abspath(path)) == os.path.abspath(old):
            return os.path.join(new, os.path.basename(path))
        return path

    out = dict(state, dirpath=new)
    for key in ("best_model_path", "kth_best_model_path", "last_model_path"):
        if key in out:
            out[key] = move(out[key])
    if isinstance(out.get("best_k_models"), dict):
        out["best_k_models"] = {move(k): v for k, v in out["best_k_models"].items()}
    return out


def run_checkpoint(dirpath: str | Path, monitor: str = "val/dice", mode: str = "max", filename: str = "best",
                   last_name: str = "last", every_n_train_steps: int | None = None,
                   enabled: bool | None = None) -> RunCheckpoint | None:
    """The ``callbacks.model_checkpoint`` entry: a ``RunCheckpoint``, or none when ``enabled`` is false.

    ``enabled`` follows ``trainer.enable_checkpointing`` in the config, so that
    ``trainer.enable_checkpointing=false`` alone turns checkpoints off (Lightning refuses a checkpoint
    callback with that flag).
    """
    if enabled is False:
        return None
    return RunCheckpoint(dirpath, monitor=monitor, mode=mode, filename=filename, last_name=last_name,
                         every_n_train_steps=every_n_train_steps)
