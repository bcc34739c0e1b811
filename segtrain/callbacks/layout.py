"""TensorBoard custom-scalars layout: per split, the loss, Dice and IoU on charts side by side.

Written once at fit start; TensorBoard shows it in the "Custom Scalars" tab, one section per
category, charts side by side. A loss and a Dice never share an axis (a focal loss of 0.003 would
lie flat at 0 next to a Dice of 0.9), and with several runs each line of a chart is one run (its
colour in the run list is its legend). Every chart is a multi-line chart whose tags are regular
expressions matched from the start of the tag name.

``train/*`` values are measured on training *patches* (random crops, foreground-centred with
``data.pos_fraction``); ``val/*`` values on *whole validation cases* (sliding window). The two
differ by design: "Dice: train patches vs val whole cases" puts them side by side.
"""

from __future__ import annotations

from lightning.pytorch import Callback

CATEGORY = "segtrain"


def default_layout(category: str = CATEGORY) -> dict[str, dict[str, list]]:
    """The layout: {category: {chart title: ["Multiline", [tag regexes]]}}, one category per split, then the rest."""
    return {
        f"{category}: validation (whole cases)": {
            "val loss": ["Multiline", ["val/loss$"]],
            "val Dice": ["Multiline", ["val/dice$"]],
            "val IoU": ["Multiline", ["val/iou$"]],
            "val Dice per class": ["Multiline", ["val/dice/"]],
            "val IoU per class": ["Multiline", ["val/iou/"]],
        },
        f"{category}: training (patches)": {
            "train loss (per step)": ["Multiline", ["train/loss$"]],
            "train loss (epoch mean)": ["Multiline", ["train/loss_epoch$"]],
            "train Dice (patches)": ["Multiline", ["train/dice$"]],
        },
        f"{category}: comparisons and diagnostics": {
            "Dice: train patches vs val whole cases": ["Multiline", ["train/dice$", "val/dice$"]],
            "Loss: train vs val": ["Multiline", ["train/loss_epoch$", "val/loss$"]],
            "Loss/metric divergence": ["Multiline", ["val_diagnostics/"]],
            "Learning rate": ["Multiline", ["lr-"]],
        },
    }


class MetricsLayout(Callback):
    """Writes the custom-scalars layout to every TensorBoard logger at fit start (rank 0).

    Args:
        category: the prefix of the section titles in the Custom Scalars tab.
    """

    def __init__(self, category: str = CATEGORY):
        self.category = category

    def on_fit_start(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        for logger in trainer.loggers:
            writer = getattr(logger, "experiment", None)
            if hasattr(writer, "add_custom_scalars"):
                writer.add_custom_scalars(default_layout(self.category))
