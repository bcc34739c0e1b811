"""Progress: Lightning's bar in a terminal, plain lines in a log file.

With the output redirected (Docker logs, SLURM output, ``make train > log``), a progress bar writes
thousands of carriage-return frames into the file. ``Progress`` keeps Lightning's tqdm bar when
standard error is a terminal, and otherwise prints one plain line every ``every_n_steps`` training
steps; the module's per-epoch table and the summary come on top, as in a terminal:

    epoch 3/14  step 12/20 (global 72)  train/loss 0.3120  9.8 steps/s
"""

from __future__ import annotations

import logging
import sys
import time

from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm, _update_n

log = logging.getLogger("segtrain")


class Progress(TQDMProgressBar):
    """Lightning's ``TQDMProgressBar`` in a terminal; plain lines when standard error is not one.

    Args:
        every_n_steps: in plain mode, one line every N training steps (0: none, only the per-epoch table).
        plain: force plain lines (true) or the bar (false); null decides from standard error.
        refresh_rate: the bar's refresh rate (Lightning's).
    """

    def __init__(self, every_n_steps: int = 50, plain: bool | None = None, refresh_rate: int = 1):
        super().__init__(refresh_rate=refresh_rate)
        if int(every_n_steps) < 0:
            raise ValueError(f"callbacks.progress.every_n_steps={every_n_steps} must be >= 0")
        self.every_n_steps = int(every_n_steps)
        self.plain = (not sys.stderr.isatty()) if plain is None else bool(plain)
        self._clock: tuple[float, int] | None = None

    def _bar(self, make) -> Tqdm:
        return Tqdm(disable=True) if self.plain else make()

    def init_sanity_tqdm(self) -> Tqdm:
        return self._bar(super().init_sanity_tqdm)

    def init_train_tqdm(self) -> Tqdm:
        return self._bar(super().init_train_tqdm)

    def init_validation_tqdm(self) -> Tqdm:
        return self._bar(super().init_validation_tqdm)

    def init_test_tqdm(self) -> Tqdm:
        return self._bar(super().init_test_tqdm)

    def init_predict_tqdm(self) -> Tqdm:
        return self._bar(super().init_predict_tqdm)

    def print(self, *args, sep: str = " ", **kwargs) -> None:
        """``LightningModule.print``: above the bar in a terminal; a plain line otherwise."""
        if self.plain:
            print(*args, sep=sep, flush=True)
        else:
            super().print(*args, sep=sep, **kwargs)

    def get_metrics(self, trainer, pl_module) -> dict:
        """The bar's numbers: Lightning's, and the last step's ``train/loss`` (a read from the device: called at intervals)."""
        items = super().get_metrics(trainer, pl_module)
        loss = getattr(pl_module, "step_loss", None)
        if loss is not None:
            items["train/loss"] = f"{float(loss):.4f}"
        return items

    def on_train_epoch_start(self, trainer, *args) -> None:
        super().on_train_epoch_start(trainer, *args)
        self._clock = (time.perf_counter(), trainer.global_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        bar = self.train_progress_bar
        if not self.plain and bar is not None and self._should_update(batch_idx + 1, bar.total):
            _update_n(bar, batch_idx + 1)
            # The bar's numbers (train/loss) are read from the device when they are logged anyway, not every
            # step: reading them is a host synchronisation, which keeps a GPU waiting.
            if trainer.global_step % max(int(trainer.log_every_n_steps), 1) == 0 or batch_idx + 1 == bar.total:
                bar.set_postfix(self.get_metrics(trainer, pl_module))
        if not (self.plain and self.every_n_steps and trainer.is_global_zero):
            return
        if trainer.global_step % self.every_n_steps:
            return
        started, first_step = self._clock or (time.perf_counter(), trainer.global_step)
        rate = (trainer.global_step - first_step) / max(time.perf_counter() - started, 1e-9)
        loss = getattr(pl_module, "step_loss", None)
        total = self.total_train_batches
        parts = [f"epoch {trainer.current_epoch}/{trainer.max_epochs - 1}" if trainer.max_epochs and trainer.max_epochs > 0
                 else f"epoch {trainer.current_epoch}",
                 f"step {batch_idx + 1}/{total if total != float('inf') else '?'} (global {trainer.global_step})"]
        if loss is not None:
            parts.append(f"train/loss {float(loss):.4f}")
        parts.append(f"{rate:.1f} steps/s")
        log.info("  ".join(parts))


def progress(every_n_steps: int = 50, plain: bool | None = None, refresh_rate: int = 1,
             enabled: bool | None = None) -> Progress | None:
    """The ``callbacks.progress`` entry: a ``Progress``, or none when ``enabled`` is false.

    ``enabled`` follows ``trainer.enable_progress_bar`` in the config, so that
    ``trainer.enable_progress_bar=false`` alone turns progress off (Lightning refuses a progress bar
    callback with that flag); the per-epoch table is printed either way.
    """
    if enabled is False:
        return None
    return Progress(every_n_steps=every_n_steps, plain=plain, refresh_rate=refresh_rate)
