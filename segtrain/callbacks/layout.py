"""TensorBoard custom-scalars layout: loss next to Dice/IoU, train patches next to val whole cases.

Written once at fit start; TensorBoard shows it in the "Custom Scalars" tab. Every chart is a
multi-line chart whose tags are regular expressions matched from the start of the tag name.

``train/*`` values are measured on training *patches* (random crops, foreground-centred with
``data.pos_fraction``); ``val/*`` values on *whole validation cases* (sliding window). The two
differ by design: the chart "Dice: train patches vs val whole cases" puts them side by side.
"""

from __future__ import annotations

from lightning.pytorch import Callback

CATEGORY = "segtrain"


def default_layout(category: str = CATEGORY) -> dict[str, dict[str, list]]:
    """The layout: {category: {chart title: ["Multiline", [tag regexes]]}}."""
    return {
        category: {
            "Loss and Dice/IoU (val, whole cases)": ["Multiline", ["val/loss$", "val/dice$", "val/iou$"]],
            "Loss and Dice (train, patches)": ["Multiline", ["train/loss_epoch$", "train/dice$"]],
            "Dice: train patches vs val whole cases": ["Multiline", ["train/dice$", "val/dice$"]],
            "Loss: train vs val": ["Multiline", ["train/loss_epoch$", "val/loss$"]],
            "Dice per class (val)": ["Multiline", ["val/dice/"]],
            "IoU per class (val)": ["Multiline", ["val/iou/"]],
            "Loss/metric divergence": ["Multiline", ["diagnostics/"]],
            "Learning rate": ["Multiline", ["lr-"]],
        }
    }


class MetricsLayout(Callback):
    """Writes the custom-scalars layout to every TensorBoard logger at fit start (rank 0).

    Args:
        category: the section title in the Custom Scalars tab.
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
