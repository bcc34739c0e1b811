"""Compound losses: a region term and a pixel-wise term on one ``LossInputs``.

Each part's ``compute`` receives the same inputs object, so the softmax (its log first: the pixel
term runs first and the region term takes ``exp(log_softmax)``) and the one-hot are computed once.
"""

from __future__ import annotations

import torch
from torch import Tensor

from segtrain.losses.base import EPS, LossInputs, SegmentationLoss
from segtrain.losses.soft_counts import safe_pow
from segtrain.losses.crossentropy import BalancedCrossEntropyLoss, CrossEntropyLoss, FocalLoss
from segtrain.losses.overlap import DiceLoss
from segtrain.losses.registry import register


@register("dice_ce")
class DiceCELoss(SegmentationLoss):
    """Dice + cross-entropy: ce_weight·CE + dice_weight·Dice (BCE + Dice when ``C == 1``).

    Isensee et al., "nnU-Net: a self-configuring method for deep learning-based biomedical image
    segmentation", Nature Methods 2021 (its default loss). Pick it first, the safe default: CE
    gives smooth early gradients, Dice keeps the foreground from being drowned by the background.

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
        self.dice = _part(DiceLoss, self, smooth=smooth, include_background=include_background)
        self.ce = CrossEntropyLoss()

    def compute(self, inputs: LossInputs) -> Tensor:
        return self.ce_weight * self.ce.compute(inputs) + self.dice_weight * self.dice.compute(inputs)


@register("dice_focal")
class DiceFocalLoss(SegmentationLoss):
    """Dice + focal: Dice + focal_weight·Focal.

    Zhu et al., "AnatomyNet: Deep learning for fast and fully automated whole-volume segmentation
    of head and neck anatomy", Medical Physics 2019. The focal term keeps learning from the hard
    voxels at the borders once Dice has found the object; pick it for small organs or lesions when
    ``dice_ce`` leaves fuzzy borders.

    Args:
        focal_weight: weight of the focal term (>= 0).
        gamma: focal exponent (>= 0).
        alpha: focal weight of the foreground positions in [0, 1], or ``None`` (no weighting).
        smooth, include_background: passed to the Dice term (see ``dice``).

    Raises:
        ValueError: a negative weight, ``gamma`` or ``smooth``; ``alpha`` outside [0, 1].
    """

    def __init__(
        self,
        focal_weight: float = 1.0,
        gamma: float = 2.0,
        alpha: float | None = None,
        smooth: float = 1.0,
        include_background: bool = False,
    ):
        super().__init__()
        self.focal_weight = self._check_range("focal_weight", focal_weight, low=0.0)
        self.dice = _part(DiceLoss, self, smooth=smooth, include_background=include_background)
        self.focal = _part(FocalLoss, self, alpha=alpha, gamma=gamma)

    def compute(self, inputs: LossInputs) -> Tensor:
        focal = self.focal.compute(inputs)
        return self.dice.compute(inputs) + self.focal_weight * focal


@register("combo")
class ComboLoss(SegmentationLoss):
    """Combo loss: alpha·balanced_ce(beta) + (1 − alpha)·dice.

    Taghanaki et al., "Combo loss: handling input and output imbalance in multi-organ
    segmentation", CMIG 2019. ``beta`` trades false positives against false negatives in the
    pixel term (above 0.5 penalises missed foreground more), ``alpha`` mixes the pixel and region
    terms. Pick it when ``dice_ce`` gives the right overlap but the wrong precision/recall balance.

    Args:
        alpha: weight of the balanced cross-entropy term, in [0, 1] (Dice gets 1 − alpha).
        beta: weight of the positives in the cross-entropy term, in [0, 1] (or ``auto``).
        smooth, include_background: passed to both terms (see ``dice`` and ``balanced_ce``).

    Raises:
        ValueError: ``alpha`` or ``beta`` outside [0, 1], a negative ``smooth``.
    """

    def __init__(self, alpha: float = 0.5, beta: float | str = 0.5, smooth: float = 1.0, include_background: bool = False):
        super().__init__()
        self.alpha = self._check_range("alpha", alpha, 0.0, 1.0)
        self.balanced_ce = _part(BalancedCrossEntropyLoss, self, beta=beta, include_background=include_background)
        self.dice = _part(DiceLoss, self, smooth=smooth, include_background=include_background)

    def compute(self, inputs: LossInputs) -> Tensor:
        pixel = self.balanced_ce.compute(inputs)
        return self.alpha * pixel + (1 - self.alpha) * self.dice.compute(inputs)


@register("exp_log")
class ExpLogLoss(SegmentationLoss):
    """Exponential logarithmic loss: w_dice·mean[(−ln Dice)^γ_dice] + w_cross·mean[w_t·(−ln p_t)^γ_cross].

    Wong et al., "3D segmentation with exponential logarithmic loss for highly unbalanced object
    sizes", MICCAI 2018. ``Dice`` is the soft Dice per (sample, kept class) with smoothing ``s``;
    ``w_l = (Σ_k f_k / f_l)^0.5`` with ``f_k`` the voxel count of class ``k`` in the batch. The
    exponents < 1 boost the classes (and voxels) that are still poorly segmented; pick it for
    several structures of very different sizes. Below 1e-6 the powers are replaced by their chords,
    so a perfect prediction has finite gradients.

    Args:
        w_dice: weight of the Dice term (>= 0).
        w_cross: weight of the cross-entropy term (>= 0).
        gamma_dice: exponent of −ln Dice (> 0).
        gamma_cross: exponent of −ln p_t (> 0).
        smooth: Dice smoothing ``s`` (>= 0).
        include_background: Dice over class 0 too (see ``dice``).

    Raises:
        ValueError: negative weights or smoothing, non-positive exponents.
    """

    def __init__(
        self,
        w_dice: float = 0.8,
        w_cross: float = 0.2,
        gamma_dice: float = 0.3,
        gamma_cross: float = 0.3,
        smooth: float = 1.0,
        include_background: bool = False,
    ):
        super().__init__()
        self.w_dice = self._check_range("w_dice", w_dice, low=0.0)
        self.w_cross = self._check_range("w_cross", w_cross, low=0.0)
        self.gamma_dice = self._check_range("gamma_dice", gamma_dice, low=0.0, low_open=True)
        self.gamma_cross = self._check_range("gamma_cross", gamma_cross, low=0.0, low_open=True)
        self.dice = _part(DiceLoss, self, smooth=smooth, include_background=include_background)

    def compute(self, inputs: LossInputs) -> Tensor:
        counts = inputs.class_counts
        weights = torch.where(counts > 0, (counts.sum() / counts.clamp_min(1.0)).sqrt(), 0.0)
        cross = (weights[inputs.target] * safe_pow(inputs.nll, self.gamma_cross)).mean()
        dice = safe_pow(-torch.log(self.dice.dice_score(inputs).clamp_min(EPS)), self.gamma_dice).mean()
        return self.w_dice * dice + self.w_cross * cross


def _part(cls, owner: SegmentationLoss, **params) -> SegmentationLoss:
    """A component loss; its parameter errors name the compound (``loss 'combo': beta=2 is out of range``)."""
    try:
        return cls(**params)
    except ValueError as err:
        raise ValueError(str(err).replace(f"loss '{cls.registry_name}'", f"loss '{owner.registry_name}'", 1)) from None
