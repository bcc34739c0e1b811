"""Region (overlap) losses: Dice, IoU, Tversky and relatives, from per-(sample, class) TP/FP/FN.

All share ``RegionLoss``'s conventions (docs/losses.md): ``smooth`` added to numerator and
denominator, class 0 dropped unless ``include_background``, per-sample values averaged (or, with
``batch``, sums over the whole batch first), statistics in float32.
"""

from __future__ import annotations

import torch
from torch import Tensor

from segtrain.losses.base import LossInputs, RegionLoss
from segtrain.losses.soft_counts import safe_pow
from segtrain.losses.registry import register

@register("dice")
class DiceLoss(RegionLoss):
    """Soft Dice loss: 1 − (2·TP + s) / (Σpᵏ + Σgᵏ + s), k = 2 if ``squared`` else 1.

    Milletari et al., "V-Net: Fully convolutional neural networks for volumetric medical image
    segmentation", 3DV 2016. Pick it as the default region loss: insensitive to the
    foreground/background ratio, but noisy on tiny objects; pair it with cross-entropy
    (``dice_ce``) for stability. ``batch`` (nnU-Net's "batch Dice") steadies it when many patches
    hold no foreground.

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

    def dice_score(self, inputs: LossInputs) -> Tensor:
        """Soft Dice per (sample, kept class): (2·TP + s) / (Σpᵏ + Σg + s)."""
        tp, sum_p, sum_g = self.region_stats(inputs, power=2 if self.squared else 1)
        # g is 0/1 so Σg² = Σg.
        return self.ratio(2 * tp + self.smooth, sum_p + sum_g + self.smooth)

    def compute(self, inputs: LossInputs) -> Tensor:
        return (1 - self.dice_score(inputs)).mean()


@register("iou")
class IoULoss(RegionLoss):
    """Soft IoU (Jaccard) loss: 1 − (TP + s) / (Σp + Σg − TP + s).

    Rahman & Wang, "Optimizing intersection-over-union in deep neural networks for image
    segmentation", ISVC 2016. Pick it when the metric you report is IoU: it penalises a partial
    overlap more than Dice does (IoU = Dice / (2 − Dice)), which sharpens small objects.

    Args:
        smooth, include_background, batch: see ``RegionLoss``.

    Raises:
        ValueError: a negative ``smooth`` or a non-boolean flag.
    """

    def compute(self, inputs: LossInputs) -> Tensor:
        tp, sum_p, sum_g = self.region_stats(inputs)
        return (1 - self.ratio(tp + self.smooth, sum_p + sum_g - tp + self.smooth)).mean()


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
        if self.alpha == 0 and self.beta == 0 and self.smooth == 0:
            self._fail("alpha=0, beta=0 and smooth=0 make the index 0/0 on an empty class; give one of them a positive value")

    def tversky_index(self, inputs: LossInputs) -> Tensor:
        stats = self.region_stats(inputs)
        tp = stats.tp
        return self.ratio(tp + self.smooth, tp + self.alpha * stats.fp + self.beta * stats.fn + self.smooth)

    def compute(self, inputs: LossInputs) -> Tensor:
        return (1 - self.tversky_index(inputs)).mean()


@register("focal_tversky")
class FocalTverskyLoss(TverskyLoss):
    """Focal Tversky loss: (1 − T)^γ, T the Tversky index (TP + s) / (TP + α·FP + β·FN + s).

    Abraham & Khan, "A novel focal Tversky loss function with improved attention U-Net for lesion
    segmentation", ISBI 2019 (their γ is our 1/γ: the default 0.75 is their 4/3). Pick it for
    tiny lesions once Tversky plateaus: γ < 1 enlarges the gradient of classes that are already
    well segmented less than that of the hard, small ones. (For γ < 1, (1 − T)^γ is replaced by
    its chord below 1e-6, so a perfect prediction has a finite gradient.)

    Args:
        alpha, beta: as ``tversky`` (alpha weighs false positives, beta false negatives).
        gamma: focal exponent, > 0 (1 gives Tversky; < 1 focuses on hard classes).
        smooth, include_background, batch: see ``RegionLoss``.

    Raises:
        ValueError: ``alpha``/``beta`` outside [0, 1], ``gamma`` <= 0, a negative ``smooth``.
    """

    def __init__(
        self,
        alpha: float = 0.3,
        beta: float | None = None,
        gamma: float = 0.75,
        smooth: float = 1.0,
        include_background: bool = False,
        batch: bool = False,
    ):
        super().__init__(alpha, beta, smooth, include_background, batch)
        self.gamma = self._check_range("gamma", gamma, low=0.0, low_open=True)

    def compute(self, inputs: LossInputs) -> Tensor:
        return safe_pow(1 - self.tversky_index(inputs), self.gamma).mean()


@register("sensitivity_specificity")
class SensitivitySpecificityLoss(RegionLoss):
    """Sensitivity-specificity loss: w·Σ(g−p)²g / (Σg + s) + (1−w)·Σ(g−p)²(1−g) / (Σ(1−g) + s).

    Brosch et al., "Deep convolutional encoder networks for multiple sclerosis lesion
    segmentation", MICCAI 2015. A squared error split into the foreground (sensitivity) and the
    background (specificity) parts, each normalised by its size; pick it for very sparse lesions,
    with a small ``sensitivity_weight`` (the paper's 0.05) since the foreground term is the larger.

    Args:
        sensitivity_weight: ``w``, weight of the foreground (sensitivity) term, in [0, 1].
        smooth: ``s`` added to both denominators (>= 0; default 1e-5).
        include_background, batch: see ``RegionLoss``.

    Raises:
        ValueError: ``sensitivity_weight`` outside [0, 1], a negative ``smooth``.
    """

    def __init__(
        self, sensitivity_weight: float = 0.05, smooth: float = 1e-5, include_background: bool = False, batch: bool = False
    ):
        super().__init__(smooth, include_background, batch)
        self.sensitivity_weight = self._check_range("sensitivity_weight", sensitivity_weight, 0.0, 1.0)

    def compute(self, inputs: LossInputs) -> Tensor:
        keep = inputs.kept_channels(self.include_background)
        p, g = inputs.probs[:, keep], inputs.onehot[:, keep]
        dims = inputs.spatial_dims
        squared_error = (g - p).square()
        foreground = (squared_error * g).sum(dims)
        background = squared_error.sum(dims) - foreground
        sum_g = g.sum(dims)
        sum_not_g = g[0, 0].numel() - sum_g
        if self.batch:
            foreground, background = foreground.sum(0), background.sum(0)
            sum_g, sum_not_g = sum_g.sum(0), sum_not_g.sum(0)
        w = self.sensitivity_weight
        return (w * self.ratio(foreground, sum_g + self.smooth)
                + (1 - w) * self.ratio(background, sum_not_g + self.smooth)).mean()


@register("generalized_dice")
class GeneralizedDiceLoss(RegionLoss):
    """Generalized Dice loss: 1 − (2·Σ_c w_c·TP_c + s) / (Σ_c w_c·(Σp_c + Σg_c) + s), w_c = 1 / (Σg_c)².

    Sudre et al., "Generalised Dice overlap as a deep learning loss function for highly unbalanced
    segmentations", DLMIA 2017. One Dice per sample over all classes at once, each class weighted by
    the inverse square of its volume, so tiny classes count as much as large ones; pick it for
    several classes of very different sizes. A class absent from the sample takes the largest weight
    of the present ones (MONAI's rule); a sample with no kept class present scores 0.

    Args:
        smooth: ``s`` (>= 0; default 1e-5).
        include_background: keep class 0 (default true: the weights already balance it).
        batch: one value over the whole batch instead of per sample then mean.

    Raises:
        ValueError: a negative ``smooth`` or a non-boolean flag.
    """

    def __init__(self, smooth: float = 1e-5, include_background: bool = True, batch: bool = False):
        super().__init__(smooth, include_background, batch)

    def compute(self, inputs: LossInputs) -> Tensor:
        tp, sum_p, sum_g = self.region_stats(inputs)
        present = sum_g > 0
        w = torch.where(present, 1.0 / sum_g.clamp_min(1.0).square(), 0.0)
        w = torch.where(present, w, w.amax(dim=1, keepdim=True))  # absent classes: the largest present weight
        numerator = 2 * (w * tp).sum(1) + self.smooth
        return (1 - self.ratio(numerator, (w * (sum_p + sum_g)).sum(1) + self.smooth)).mean()
