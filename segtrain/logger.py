"""The TensorBoard logger (``configs/logger/``): Lightning's, with the tags in the order a user reads them.

TensorBoard's Time Series tab groups the cards by the tag's first part and shows the groups in
alphabetical order, the first two open. segtrain's own tags are named so that ``train`` (its loss, Dice,
learning rate) and ``val`` (loss, Dice, IoU per class) are those two: diagnostics, the HParams metrics and
the images sort after them (``val_diagnostics/``, ``val_summary/``, ``val_overlays/``). The one tag
Lightning adds by itself, ``epoch``, is written as ``x_axis/epoch``: the epoch of each step, for plotting
against epochs; it sorts after the rest.
"""

from __future__ import annotations

from lightning.pytorch.loggers import TensorBoardLogger

RENAMED = {"epoch": "x_axis/epoch"}  # Lightning's own tags, where segtrain puts them


class Tensorboard(TensorBoardLogger):
    """``lightning.pytorch.loggers.TensorBoardLogger`` writing Lightning's ``epoch`` as ``x_axis/epoch``."""

    def log_metrics(self, metrics, step=None) -> None:
        super().log_metrics({RENAMED.get(k, k): v for k, v in metrics.items()}, step)
