"""Progress: Lightning's bar in a terminal, plain lines in a log file.

With the output redirected (Docker logs, SLURM output, ``make train > log``), a progress bar writes
thousands of carriage-return frames into the file. ``Progress`` keeps Lightning's tqdm bar when
standard error is a terminal, and otherwise prints one plain line every ``every_n_steps`` training
steps, and at least one every ``every_n_seconds`` while steps or a validation run (a slow epoch of
20 steps says it is alive); the module's per-epoch table and the summary come on top, as in a terminal:

    epoch 4/15  step 12/20 (global 72)  train/loss 0.3120  9.8 steps/s
    epoch 4/15  validation: case 3/6, 31 s
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

    def __init__(self, every_n_steps: int = 50, plain: bool | None = None, refresh_rate: int = 1,
                 every_n_seconds: float = 30):
        super().__init__(refresh_rate=refresh_rate)
        if int(every_n_steps) < 0:
            raise ValueError(f"callbacks.progress.every_n_steps={every_n_steps} must be >= 0")
        if float(every_n_seconds) < 0:
            raise ValueError(f"callbacks.progress.every_n_seconds={every_n_seconds} must be >= 0 (0: by steps only)")
        self.every_n_steps, self.every_n_seconds = int(every_n_steps), float(every_n_seconds)
        self._last_line = time.perf_counter()
        self._validation_started = 0.0
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
        if not (self.plain and trainer.is_global_zero):
            return
        by_steps = self.every_n_steps and trainer.global_step % self.every_n_steps == 0
        if not (by_steps or self._due()):
            return
        started, first_step = self._clock or (time.perf_counter(), trainer.global_step)
        rate = (trainer.global_step - first_step) / max(time.perf_counter() - started, 1e-9)
        loss = getattr(pl_module, "step_loss", None)
        total = self.total_train_batches
        parts = [_epoch(trainer), f"step {batch_idx + 1}/{total if total != float('inf') else '?'} (global {trainer.global_step})"]
        if loss is not None:
            parts.append(f"train/loss {float(loss):.4f}")
        parts.append(f"{rate:.1f} steps/s")
        self._line("  ".join(parts))

    def _due(self) -> bool:
        return bool(self.every_n_seconds) and time.perf_counter() - self._last_line >= self.every_n_seconds

    def _line(self, text: str) -> None:
        self._last_line = time.perf_counter()
        log.info(text)

    def on_validation_start(self, trainer, pl_module) -> None:
        super().on_validation_start(trainer, pl_module)
        self._validation_started = time.perf_counter()

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        super().on_validation_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)
        if self.plain and trainer.is_global_zero and not trainer.sanity_checking and self._due():
            total = self.total_val_batches_current_dataloader
            shown = total if total != float("inf") else "?"
            self._line(f"{_epoch(trainer)}  validation: case {batch_idx + 1}/{shown}, "
                       f"{time.perf_counter() - self._validation_started:.0f} s")


def _epoch(trainer) -> str:
    """``epoch 4/15``: counted from 1, of ``trainer.max_epochs`` (``epoch 4`` without a limit)."""
    limit = trainer.max_epochs
    return f"epoch {trainer.current_epoch + 1}/{limit}" if limit and limit > 0 else f"epoch {trainer.current_epoch + 1}"


def progress(every_n_steps: int = 50, plain: bool | None = None, refresh_rate: int = 1,
             enabled: bool | None = None, every_n_seconds: float = 30) -> Progress | None:
    """The ``callbacks.progress`` entry: a ``Progress``, or none when ``enabled`` is false.

    ``enabled`` follows ``trainer.enable_progress_bar`` in the config, so that
    ``trainer.enable_progress_bar=false`` alone turns progress off (Lightning refuses a progress bar
    callback with that flag); the per-epoch table is printed either way.
    """
    if enabled is False:
        return None
    return Progress(every_n_steps=every_n_steps, plain=plain, refresh_rate=refresh_rate, every_n_seconds=every_n_seconds)
