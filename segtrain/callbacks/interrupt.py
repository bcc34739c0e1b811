"""Nothing lost on Ctrl-C or a crash: save a resumable checkpoint when training stops on an exception."""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch import Callback, LightningModule, Trainer


class SaveOnInterrupt(Callback):
    """Writes ``<dirpath>/<filename>.ckpt`` when fitting ends on an exception (KeyboardInterrupt included).

    Like Lightning's ``OnExceptionCheckpoint``, but without its side effect: with that callback
    registered, ``fit(ckpt_path=None)`` silently resumes from the newest checkpoint in the folder.
    segtrain resumes only when asked: ``segtrain ckpt_path=<run dir>/checkpoints/interrupted.ckpt``.
    """

    def __init__(self, dirpath: str | Path, filename: str = "interrupted"):
        self.path = Path(dirpath) / f"{filename}.ckpt"

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        if trainer.state.fn == "fit" and trainer.global_step > 0:
            trainer.save_checkpoint(self.path)
