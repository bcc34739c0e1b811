"""Compound losses: sums of a region loss and a pixel-wise loss, sharing one softmax and one one-hot."""

from __future__ import annotations

from torch import Tensor

from segtrain.losses.base import LossInputs, SegmentationLoss
from segtrain.losses.crossentropy import CrossEntropyLoss
from segtrain.losses.overlap import DiceLoss
from segtrain.losses.registry import register


@register("dice_ce")
class DiceCELoss(SegmentationLoss):
    """Dice + cross-entropy: ce_weight·CE + dice_weight·Dice (BCE + Dice when ``C == 1``).

    Isensee et al., "nnU-Net: a self-configuring method for deep learning-based biomedical image
    segmentation", Nature Methods 2021 (its default loss). The safe default: CE gives smooth early
    gradients, Dice keeps the foreground from being drowned by the background.

    Args:
        ce_weight: weight of the cross-entropy term (>= 0).
        dice_weight: weight of the Dice term (>= 0).
        smooth, include_background: passed to the Dice term (see ``dice``).

    Raises:
        ValueError: negative weights or smoothing.
    """

    def __init__(self, ce_weight: float = 1.0, dice_weight: float = 1.0, smooth: float = 1.0, include_background: bool = False):
        super().__init__()
        self.ce_weight = self._check_range("ce_weight", ce_weight, low=0.0)
        self.dice_weight = self._check_range("dice_weight", dice_weight, low=0.0)
        self.dice = DiceLoss(smooth=smooth, include_background=include_background)
        self.ce = CrossEntropyLoss()

    def compute(self, inputs: LossInputs) -> Tensor:
        return self.ce_weight * self.ce.compute(inputs) + self.dice_weight * self.dice.compute(inputs)
