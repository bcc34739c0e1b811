"""``LearningRates``: Lightning's ``LearningRateMonitor`` under ``train/`` (TensorBoard shows that group first,
segtrain/logger.py), and quiet for a run without loggers (``logger=none``)."""

from __future__ import annotations

from lightning.pytorch.callbacks import LearningRateMonitor


class LearningRates(LearningRateMonitor):
    """``train/lr-<optimizer>`` every epoch (or step), as Lightning's monitor; nothing, instead of an error, without loggers."""

    def _check_duplicates_and_update_name(self, *args, **kwargs) -> list[str]:
        return [f"train/{name}" for name in super()._check_duplicates_and_update_name(*args, **kwargs)]

    def on_train_start(self, trainer, *args, **kwargs) -> None:
        if trainer.loggers:
            super().on_train_start(trainer, *args, **kwargs)

    def on_train_batch_start(self, trainer, *args, **kwargs) -> None:
        if trainer.loggers:
            super().on_train_batch_start(trainer, *args, **kwargs)

    def on_train_epoch_start(self, trainer, *args, **kwargs) -> None:
        if trainer.loggers:
            super().on_train_epoch_start(trainer, *args, **kwargs)
