"""Region (overlap) losses: Dice, Tversky and relatives, computed from per-(sample, class) TP/FP/FN."""

from __future__ import annotations

from torch import Tensor

from segtrain.losses.base import LossInputs, RegionLoss
from segtrain.losses.registry import register


@register("dice")
class DiceLoss(RegionLoss):
    """Soft Dice loss: 1 − (2·TP + s) / (Σpᵏ + Σgᵏ + s), k = 2 if ``squared`` else 1.

    Milletari et al., "V-Net: Fully convolutional neural networks for volumetric medical image
    segmentation", 3DV 2016. The default region loss: insensitive to the foreground/background
    ratio, but noisy on tiny objects; pair it with cross-entropy (``dice_ce``) for stability.

    Args:
        smooth: Laplace smoothing ``s`` (>= 0).
        squared: square the terms of the denominator (V-Net's original form).
        include_background, batch: see ``RegionLoss``.

    Raises:
        ValueError: a negative ``smooth`` or a non-boolean flag.
    """

    def __init__(self, smooth: float = 1.0, squared: bool = False, include_background: bool = False, batch: bool = False):
        super().__init__(smooth, include_background, batch)
        self.squared = self._check_bool("squared", squared)

    def compute(self, inputs: LossInputs) -> Tensor:
        tp, sum_p, sum_g = self.region_stats(inputs, power=2 if self.squared else 1)
        # g is 0/1 so Σg² = Σg.
        return (1 - (2 * tp + self.smooth) / (sum_p + sum_g + self.smooth)).mean()


@register("tversky")
class TverskyLoss(RegionLoss):
    """Tversky loss: 1 − (TP + s) / (TP + α·FP + β·FN + s), averaged over samples and classes.

    Salehi et al., "Tversky loss function for image segmentation using 3D fully convolutional deep
    networks", MLMI 2017. Pick it when a missed lesion costs more than a false alarm: ``alpha``
    weighs false positives, so ``alpha=0.3`` (beta 0.7) favours recall, the setting for small
    lesions; ``alpha=0.7`` trades recall for precision. alpha = beta = 0.5 is Dice, 1 and 1 is IoU.

    Args:
        alpha: weight of false positives, in [0, 1].
        beta: weight of false negatives, in [0, 1]; ``None`` means ``1 - alpha``.
        smooth, include_background, batch: see ``RegionLoss``.

    Raises:
        ValueError: ``alpha`` or ``beta`` outside [0, 1], a negative ``smooth``.
    """

    def __init__(
        self,
        alpha: float = 0.3,
        beta: float | None = None,
        smooth: float = 1.0,
        include_background: bool = False,
        batch: bool = False,
    ):
        super().__init__(smooth, include_background, batch)
        self.alpha = self._check_range("alpha", alpha, 0.0, 1.0)
        self.beta = self._check_range("beta", beta, 0.0, 1.0, allow_none=True)
        if self.beta is None:
            self.beta = 1.0 - self.alpha

    def tversky_index(self, inputs: LossInputs) -> Tensor:
        tp, sum_p, sum_g = self.region_stats(inputs)
        fp, fn = sum_p - tp, sum_g - tp
        return (tp + self.smooth) / (tp + self.alpha * fp + self.beta * fn + self.smooth)

    def compute(self, inputs: LossInputs) -> Tensor:
        return (1 - self.tversky_index(inputs)).mean()
