"""Where a run's wall time goes: start-up, training steps, data wait, validation, checkpoints and logging.

Measured on the host between Lightning's hooks (``time.perf_counter``), so on a GPU a step's queued
work is counted where the host waits for it (at the logging interval, when values are read back).
The run summary prints one line of it; ``scripts/gpu_evidence.py`` reads the same line.
"""

from __future__ import annotations

import time

from lightning.pytorch import Callback

PHASES = ("start-up", "training steps", "data wait", "validation", "checkpoints and logging", "test")


class WallClock(Callback):
    """Adds up the seconds of each phase of ``trainer.fit`` (and ``trainer.test``) from ``started`` on.

    Args:
        started: ``time.perf_counter()`` when the run started (before configs, data and network were built).
    """

    def __init__(self, started: float | None = None):
        self.started = time.perf_counter() if started is None else started
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self._mark: float | None = None       # the end of the last batch (or the start of the epoch)
        self._batch: float | None = None
        self._validation: float | None = None
        self._fit: float | None = None
        self._test: float | None = None

    def on_train_start(self, trainer, pl_module) -> None:
        self._fit = time.perf_counter()
        self.seconds["start-up"] += self._fit - self.started

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._mark = time.perf_counter()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        self._batch = time.perf_counter()
        if self._mark is not None:  # the loader's next batch, its transfer and (on a GPU) its augmentation
            self.seconds["data wait"] += self._batch - self._mark

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self._mark = time.perf_counter()
        if self._batch is not None:
            self.seconds["training steps"] += self._mark - self._batch

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._mark = None

    def on_validation_start(self, trainer, pl_module) -> None:
        self._validation = time.perf_counter()
        self._mark = None  # validation inside an epoch (val_check_interval): the wait for the next batch starts after it

    def on_validation_end(self, trainer, pl_module) -> None:  # before the checkpoint callbacks (Lightning runs them last)
        if self._validation is not None:
            self.seconds["validation"] += time.perf_counter() - self._validation
        self._validation = None

    def on_train_end(self, trainer, pl_module) -> None:
        if self._fit is not None:
            inside = time.perf_counter() - self._fit
            measured = sum(self.seconds[p] for p in ("training steps", "data wait", "validation"))
            self.seconds["checkpoints and logging"] += max(0.0, inside - measured)
        self._fit = None

    def on_test_start(self, trainer, pl_module) -> None:
        self._test = time.perf_counter()

    def on_test_end(self, trainer, pl_module) -> None:
        if self._test is not None:
            self.seconds["test"] += time.perf_counter() - self._test

    def line(self, total: float) -> str:
        """``time: start-up 6.1 s, training steps 20.3 s, ...`` of ``total`` seconds (phases under 0.05 s left out)."""
        parts = [f"{name} {value:.1f} s" for name, value in self.seconds.items() if value >= 0.05]
        other = total - sum(self.seconds.values())
        if other >= 0.05:
            parts.append(f"other {other:.1f} s")
        return f"time: {total:.1f} s = " + ", ".join(parts)
